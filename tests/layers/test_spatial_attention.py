"""CBAM spatial module, CBAM and the Attention U-Net gate: shapes, counts, what the gates do."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers.channel_attention import ChannelAttention
from jaxcnn.layers.spatial_attention import CBAM, AttentionGate, SpatialAttention
from jaxcnn.utils import param_count

KEY = jax.random.key(0)


def positive_input(shape, seed=1):
  return jax.random.uniform(jax.random.key(seed), shape, minval=0.5, maxval=2.0)


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_spatial_attention_shape_and_parameter_count(kernel_size):
  x = positive_input((2, 9, 9, 5))
  module = SpatialAttention(kernel_size)
  variables = module.init(KEY, x)
  chex.assert_shape(module.apply(variables, x), x.shape)
  assert param_count(variables["params"]) == 2 * kernel_size**2 + 2  # conv (2 -> 1, no bias) + BN


def test_spatial_gate_is_constant_over_channels_and_ignores_their_order():
  x = positive_input((2, 8, 8, 6))
  module = SpatialAttention()
  variables = module.init(KEY, x)
  variables["params"]["conv"]["kernel"] = 0.2 * jax.random.normal(KEY, (7, 7, 2, 1))
  gate = module.apply(variables, x) / x
  chex.assert_trees_all_close(gate, jnp.broadcast_to(gate[..., :1], gate.shape), rtol=1e-5)
  assert bool(jnp.all((gate > 0) & (gate < 1)))
  assert float(gate[..., 0].std()) > 1e-3  # it does vary over positions
  order = jnp.array([3, 0, 5, 1, 4, 2])
  chex.assert_trees_all_close(module.apply(variables, x[..., order]) / x[..., order], gate[..., order], rtol=1e-5)


def test_cbam_is_channel_then_spatial_attention():
  x = positive_input((2, 6, 6, 32))
  module = CBAM()
  variables = module.init(KEY, x)
  params = variables["params"]
  assert set(params) == {"channel", "spatial"}
  hidden = 2
  assert param_count(params) == (2 * 32 * hidden + hidden + 32) + (2 * 49 + 2)
  y = module.apply(variables, x)
  after_channel = ChannelAttention().apply({"params": params["channel"]}, x)
  expected = SpatialAttention().apply({"params": params["spatial"], "batch_stats": variables["batch_stats"]["spatial"]},
                                      after_channel)
  chex.assert_trees_all_close(y, expected, rtol=1e-6)


def attention_gate_count(channels, gating, inter, subsample=1, projection=True):
  count = subsample**2 * channels * inter + (gating * inter + inter) + (inter + 1)
  return count + (channels * channels + channels + 2 * channels if projection else 0)


@pytest.mark.parametrize("subsample,projection", [(1, True), (2, False)])
def test_attention_gate_shapes_and_parameter_count(subsample, projection):
  x, g = positive_input((2, 8, 8, 6)), positive_input((2, 4, 4, 10), seed=2)  # coarser gating signal
  module = AttentionGate(subsample=subsample, output_projection=projection)
  variables = module.init(KEY, x, g)
  y, alpha = module.apply(variables, x, g)
  chex.assert_shape(y, x.shape)
  chex.assert_shape(alpha, (2, 8, 8, 1))
  assert bool(jnp.all((alpha >= 0) & (alpha <= 1)))
  assert param_count(variables["params"]) == attention_gate_count(6, 10, 3, subsample, projection)


def test_attention_gate_output_is_alpha_times_x():
  x, g = positive_input((2, 8, 8, 6)), positive_input((2, 4, 4, 10), seed=2)
  module = AttentionGate(output_projection=False)
  variables = module.init(KEY, x, g)
  y, alpha = module.apply(variables, x, g)
  chex.assert_trees_all_close(y, alpha * x, rtol=1e-6)


def test_attention_gate_zeroes_where_the_gating_signal_says_so():
  """theta = 0, phi = sum of g's channel, psi = 1e4 * . - 1e3: alpha is 0 where g = 0 and 1 where g = 1."""
  x = positive_input((1, 8, 8, 4))
  g = jnp.zeros((1, 8, 8, 1)).at[:, :, 4:].set(1.0)  # right half "attend"
  module = AttentionGate(inter_channels=2, output_projection=False)
  variables = module.init(KEY, x, g)
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  params["phi"]["kernel"] = jnp.ones_like(params["phi"]["kernel"])
  params["psi"]["kernel"] = jnp.full_like(params["psi"]["kernel"], 1e4)
  params["psi"]["bias"] = jnp.full_like(params["psi"]["bias"], -1e3)
  y, alpha = module.apply({"params": params}, x, g)
  np.testing.assert_array_equal(alpha[:, :, :4], 0.0)
  np.testing.assert_array_equal(alpha[:, :, 4:], 1.0)
  np.testing.assert_array_equal(y[:, :, :4], 0.0)
  chex.assert_trees_all_close(y[:, :, 4:], x[:, :, 4:])


def test_attention_gate_rejects_mismatched_inputs():
  with pytest.raises(UserError, match="subsample"):
    AttentionGate(subsample=3).init(KEY, jnp.ones((1, 8, 8, 2)), jnp.ones((1, 4, 4, 2)))
  with pytest.raises(UserError, match="batch"):
    AttentionGate().init(KEY, jnp.ones((2, 8, 8, 2)), jnp.ones((1, 4, 4, 2)))
