"""jaxcnn: vision models in flax.linen and one generic JAX trainer."""
from jaxcnn import host_memory

# Before JAX starts its threads: XLA:CPU's step scratch memory stays mapped (see host_memory).
host_memory.configure()

from jaxcnn.errors import UserError
from jaxcnn.registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["UserError", "create_model", "list_models", "register_model"]
