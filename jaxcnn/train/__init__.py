"""The generic trainer: sharding, state, step, loop, checkpoints and run outputs."""
from jaxcnn.train.trainer import Diverged, train_and_evaluate, validate

__all__ = ["Diverged", "train_and_evaluate", "validate"]
