"""Convolutional highway networks: the gating formula, negative gate bias, counts, shapes, learning signal."""
import chex
import jax
import jax.numpy as jnp
import pytest

from model_checks import check_bfloat16, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.highway import HighwayConv
from jaxcnn.utils import abstract_variables, param_count


def test_layer_computes_the_highway_formula():
  layer = HighwayConv(gate_bias_init=-2.0)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  variables = layer.init(jax.random.key(1), x)
  chex.assert_trees_all_equal(variables["params"]["t"]["bias"], jnp.full((4,), -2.0))
  conv = lambda p: jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  h = jax.nn.relu(conv(variables["params"]["h"]))
  t = jax.nn.sigmoid(conv(variables["params"]["t"]))
  chex.assert_trees_all_close(layer.apply(variables, x), h * t + x * (1 - t), atol=1e-5)
  # With the negative bias the layer starts mostly carrying its input.
  assert float(jnp.mean(t)) < 0.3


def test_parameter_count_and_depth():
  variables = abstract_variables(create_model("highway_net"), (1, 32, 32, 3))["params"]
  highway = sum(2 * (9 * w * w + w) * 5 for w in (32, 64, 128))
  entries = (9 * 3 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128)
  assert param_count(variables) == highway + entries + 128 * 10 + 10 == 2_032_138
  plain, highway = (sum(1 for k in variables if tag in k) for tag in ("_entry", "_highway"))
  assert (plain, highway) == (3, 15)  # + the classifier: 19 layers


@pytest.mark.parametrize("size", [32, 224])
def test_logit_shapes_and_features(size):
  model = create_model("highway_net", num_classes=7)
  variables = abstract_variables(model, (1, size, size, 3))
  chex.assert_shape(jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)),
                    (2, 7))
  features = jax.eval_shape(create_model("highway_net", return_features=True).apply, variables,
                            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert [f.shape[1:] for f in features.values()] == [(size, size, 32), (size // 2, size // 2, 64),
                                                      (size // 4, size // 4, 128)]


def test_strongly_negative_gate_bias_carries_the_input():
  """T -> 0: the layer is the identity, whatever H computes (the carry path of sec. 2)."""
  layer = HighwayConv(gate_bias_init=-30.0)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  variables = random_variables(layer, x.shape)
  variables = {"params": {**variables["params"], "t": {**variables["params"]["t"], "bias": jnp.full((3,), -30.0)}}}
  chex.assert_trees_all_close(layer.apply(variables, x), x, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [(dict(widths=()), "widths"), (dict(kernel_size=2), "kernel_size"),
                                          (dict(gate_bias_init=1.0), "gate_bias_init"),
                                          (dict(layers_per_stage=0), "layers_per_stage")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("highway_net", **kwargs)


def test_too_small_input_is_a_user_error():
  with pytest.raises(UserError, match="at least 4x4"):
    abstract_variables(create_model("highway_net"), (1, 2, 2, 3))


@pytest.mark.parametrize("name,kwargs", [("highway_net", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)
