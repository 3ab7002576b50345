"""Per-model XLA:CPU compile options: which models ask for them, and that XLA honours them."""
import jax
import jax.numpy as jnp
import ml_collections

from jaxcnn.layers import cpu_conv
from jaxcnn.tasks.classification import Classification


def _task(name):
  config = ml_collections.ConfigDict({"model": {"name": name},
                                      "train": {"compute_dtype": "float32", "label_smoothing": 0.0}})
  return Classification(config, type("Info", (), {"num_classes": 10}))


def test_vit_asks_for_eigen_matmuls_on_cpu_and_cnns_ask_for_nothing(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  assert _task("vit_tiny_patch4_32").compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert _task("resnet18_cifar").compiler_options() == {}
  monkeypatch.setenv(cpu_conv.ENV_VAR, "0")  # plain XLA: no options either
  assert _task("vit_tiny_patch4_32").compiler_options() == {}


def test_the_option_moves_matmuls_off_ynnpack():
  """If XLA stopped reading the option, ViT's step would silently lose what it was chosen for."""
  x, w = jax.ShapeDtypeStruct((1024, 192), jnp.float32), jax.ShapeDtypeStruct((192, 768), jnp.float32)
  matmul = lambda x, w: jax.nn.relu(x @ w)
  default = jax.jit(matmul).lower(x, w).compile().as_text()
  eigen = jax.jit(matmul, compiler_options=_task("vit_tiny_patch4_32").compiler_options()).lower(
      x, w).compile().as_text()
  assert "__ynn_fusion" in default, default
  assert "__ynn_fusion" not in eigen, eigen
