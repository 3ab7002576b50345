"""ConvBNAct: conv (same padding, groups, no bias) -> BatchNorm -> activation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers import ConvBNAct


@pytest.mark.parametrize("kernel,strides,groups", [(3, 1, 1), (3, 2, 4), (5, 2, 8), (1, 1, 1)])
def test_shapes_and_parameters(kernel, strides, groups):
  x = jnp.ones((2, 9, 9, 8))
  layer = ConvBNAct(8, kernel, strides, groups=groups)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert variables["params"]["conv"]["kernel"].shape == (kernel, kernel, 8 // groups, 8)
  assert "bias" not in variables["params"]["conv"]
  assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}
  chex.assert_shape(jax.eval_shape(layer.apply, variables, x), (2, -(-9 // strides), -(-9 // strides), 8))


def test_eval_is_conv_then_affine_bn_then_activation():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  layer = ConvBNAct(4, activation=None, bn_epsilon=1e-3)
  variables = layer.init(jax.random.key(1), x)
  stats = {"mean": jnp.arange(4.0), "var": jnp.full((4,), 2.0)}
  variables = {"params": {**variables["params"], "bn": {"scale": jnp.full((4,), 3.0), "bias": jnp.ones(4)}},
               "batch_stats": {"bn": stats}}
  conv = jax.lax.conv_general_dilated(x, variables["params"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  expected = (conv - stats["mean"]) / jnp.sqrt(2.0 + 1e-3) * 3.0 + 1.0
  chex.assert_trees_all_close(layer.apply(variables, x), expected, atol=1e-5)
  relu = ConvBNAct(4, bn_epsilon=1e-3).apply(variables, x)
  chex.assert_trees_all_close(relu, jnp.maximum(expected, 0), atol=1e-5)


def test_training_uses_batch_statistics_and_updates_the_running_ones():
  x = 3.0 + jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  layer = ConvBNAct(2, 1, activation=None)
  variables = layer.init(jax.random.key(1), x)
  y, state = layer.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4)
  assert not np.allclose(state["batch_stats"]["bn"]["mean"], 0.0)
