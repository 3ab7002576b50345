"""CRNN: the paper's sizes (eval_shape only), column count, bad input."""
import jax
import jax.numpy as jnp
import pytest

from jaxcnn.errors import UserError
from jaxcnn.models.crnn import output_length
from jaxcnn.registry import create_model
from jaxcnn.utils import param_count


def shapes(name, width, **kw):
  model = create_model(name, **kw)
  x = jax.ShapeDtypeStruct((2, 32, width, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return variables, jax.eval_shape(model.apply, variables, x)


def test_paper_sizes():
  variables, out = shapes("crnn", 100)
  assert out.shape == (2, 26, 37)           # 100 px -> 26 columns, 36 characters + blank
  assert param_count(variables["params"]) == 8_326_693
  assert set(variables["batch_stats"]) == {"bn5", "bn6"}   # Table 1: BN after conv5 and conv6
  lstm = variables["params"]["lstm1"]["l0"]["cell"]
  assert lstm["ii"]["kernel"].shape == (512, 256) and "l0_reverse" in variables["params"]["lstm1"]


@pytest.mark.parametrize("width", [16, 100, 128, 157])
def test_output_length(width):
  assert shapes("crnn_small", width)[1].shape[1] == output_length(width)


def test_needs_height_32():
  with pytest.raises(UserError, match="height 32"):
    create_model("crnn_small").init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 100, 1)))
