"""Channel attention blocks: shapes, parameter counts by formula, and what each gate depends on."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers.channel_attention import (ChannelAttention, EfficientChannelAttention,
                                             GlobalSecondOrderPooling, SqueezeExcitation,
                                             channel_covariance, eca_kernel_size, reduced_channels)
from jaxcnn.utils import param_count

KEY = jax.random.key(0)


def positive_input(shape, seed=1):
  """Strictly positive features, so output / input recovers the gate."""
  return jax.random.uniform(jax.random.key(seed), shape, minval=0.5, maxval=2.0)


def init_apply(module, x, **kwargs):
  variables = module.init(KEY, x, **kwargs)
  return variables, module.apply(variables, x, **kwargs)


def test_reduced_channels_follows_timm_make_divisible():
  assert reduced_channels(256, 1 / 16, 8) == 16
  assert reduced_channels(2048, 1 / 16, 8) == 128
  assert reduced_channels(64, 1 / 16, 8) == 8    # 4 is raised to the divisor
  assert reduced_channels(24, 0.25, 1) == 6
  assert reduced_channels(40, 1 / 16, 1) == 3    # 2.5 rounds half up


# ----------------------------------------------------------------------------- SE
@pytest.mark.parametrize("channels,hidden", [(32, 8), (256, 16)])
def test_se_shape_and_parameter_count(channels, hidden):
  x = positive_input((2, 5, 5, channels))
  variables, y = init_apply(SqueezeExcitation(), x)
  chex.assert_shape(y, x.shape)
  chex.assert_shape(variables["params"]["fc1"]["kernel"], (1, 1, channels, hidden))
  assert param_count(variables) == 2 * channels * hidden + hidden + channels


def test_se_output_is_input_times_a_spatially_constant_gate_from_the_mean():
  x = positive_input((3, 6, 7, 16))
  variables, y = init_apply(SqueezeExcitation(rd_channels=4), x)
  gate = y / x
  chex.assert_trees_all_close(gate, jnp.broadcast_to(gate[:, :1, :1], gate.shape), rtol=1e-5)
  assert bool(jnp.all((gate > 0) & (gate < 1)))
  p = variables["params"]
  mean = x.mean(axis=(1, 2))
  hidden = jax.nn.relu(mean @ p["fc1"]["kernel"][0, 0] + p["fc1"]["bias"])
  expected = jax.nn.sigmoid(hidden @ p["fc2"]["kernel"][0, 0] + p["fc2"]["bias"])
  chex.assert_trees_all_close(gate[:, 0, 0], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- ECA
@pytest.mark.parametrize("channels,k", [(8, 3), (16, 3), (64, 3), (128, 5), (256, 5), (512, 5),
                                        (1024, 5), (2048, 7), (4096, 7), (8192, 7)])
def test_eca_kernel_size_is_the_nearest_odd_of_log2_formula(channels, k):
  assert eca_kernel_size(channels) == k  # |log2(C)/2 + 1/2|_odd
  variables = jax.eval_shape(EfficientChannelAttention().init, KEY,
                             jax.ShapeDtypeStruct((1, 2, 2, channels), jnp.float32))
  chex.assert_shape(variables["params"]["conv"]["kernel"], (k, 1, 1))
  assert param_count(variables) == k


def test_eca_kernel_size_depends_on_gamma_and_beta():
  assert eca_kernel_size(256, gamma=1, beta=0) == 9   # |8|_odd
  assert eca_kernel_size(256, gamma=4, beta=4) == 3   # |3|_odd


def test_eca_gate_of_a_channel_sees_only_its_k_neighbours():
  channels, k = 32, 3
  x = positive_input((1, 4, 4, channels))
  module = EfficientChannelAttention()
  variables = module.init(KEY, x)
  gate = lambda x: (module.apply(variables, x) / x)[0, 0, 0]
  base = gate(x)
  chex.assert_trees_all_close(module.apply(variables, x) / x,
                              jnp.broadcast_to(base, x.shape), rtol=1e-5)
  j = 10
  changed = jnp.abs(gate(x.at[..., j].multiply(3.0)) - base) > 1e-6
  np.testing.assert_array_equal(np.flatnonzero(changed), np.arange(j - k // 2, j + k // 2 + 1))


def test_eca_rejects_an_even_kernel():
  with pytest.raises(UserError, match="odd"):
    EfficientChannelAttention(kernel_size=4).init(KEY, jnp.ones((1, 2, 2, 8)))


# ----------------------------------------------------------------------------- CBAM channel module
@pytest.mark.parametrize("mlp_bias", [True, False])
def test_cbam_channel_parameter_count(mlp_bias):
  channels, hidden = 64, 4
  variables, y = init_apply(ChannelAttention(mlp_bias=mlp_bias), positive_input((2, 3, 3, channels)))
  chex.assert_shape(y, (2, 3, 3, channels))
  assert param_count(variables) == 2 * channels * hidden + (hidden + channels if mlp_bias else 0)


def test_cbam_channel_gate_uses_the_max_as_well_as_the_mean():
  x = positive_input((1, 4, 4, 16))
  # Same per-channel mean, larger per-channel max: a mean-only gate (SE) could not tell them apart.
  spread = x.at[:, 0, 0].add(1.0).at[:, 0, 1].add(-1.0)
  chex.assert_trees_all_close(x.mean((1, 2)), spread.mean((1, 2)), rtol=1e-6)
  module = ChannelAttention(rd_channels=4)
  variables = module.init(KEY, x)
  gate_a = (module.apply(variables, x) / x)[:, 2, 2]
  gate_b = (module.apply(variables, spread) / spread)[:, 2, 2]
  assert float(jnp.max(jnp.abs(gate_a - gate_b))) > 1e-4
  se = SqueezeExcitation(rd_channels=4)
  se_vars = se.init(KEY, x)
  chex.assert_trees_all_close((se.apply(se_vars, x) / x)[:, 2, 2],
                              (se.apply(se_vars, spread) / spread)[:, 2, 2], rtol=1e-5)


# ----------------------------------------------------------------------------- GSoP
def test_channel_covariance_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
  cov = channel_covariance(jnp.asarray(x))
  for b in range(2):
    np.testing.assert_allclose(cov[b], np.cov(x[b].reshape(-1, 4).T, bias=True), rtol=1e-5, atol=1e-6)


def gsop_count(channels, d):
  return (channels * d + d) + 2 * d + 2 * d + (4 * d * d + 4 * d) + (4 * d * channels + channels)


@pytest.mark.parametrize("channels,d", [(32, 8), (256, 128)])
def test_gsop_shape_and_parameter_count(channels, d):
  x = jax.ShapeDtypeStruct((2, 6, 6, channels), jnp.float32)
  module = GlobalSecondOrderPooling(reduced_channels=d)
  variables = jax.eval_shape(module.init, KEY, x)
  assert param_count(variables["params"]) == gsop_count(channels, d)
  chex.assert_shape(variables["params"]["row_conv"]["kernel"], (d, 1, 1, 4 * d))  # row-wise: d groups
  chex.assert_shape(jax.eval_shape(module.apply, variables, x), x.shape)


@pytest.fixture(scope="module")
def gsop():
  module = GlobalSecondOrderPooling(reduced_channels=8)
  x = positive_input((2, 6, 6, 16))
  variables = module.init(KEY, x)
  # Non-trivial running statistics so the eval-mode BNs do something.
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}
  return jax.jit(lambda x: module.apply(variables, x) / x), x


def test_gsop_gate_is_invariant_to_permuting_positions(gsop):
  gate, x = gsop
  base = gate(x)
  chex.assert_trees_all_close(base, jnp.broadcast_to(base[:, :1, :1], base.shape), rtol=1e-5)
  assert bool(jnp.all((base > 0) & (base < 1)))
  order = np.random.default_rng(1).permutation(36)
  permuted = x.reshape(2, 36, 16)[:, order].reshape(x.shape)
  chex.assert_trees_all_close(gate(permuted)[:, 0, 0], base[:, 0, 0], rtol=1e-4, atol=1e-6)


def test_gsop_gate_depends_on_cross_channel_covariance(gsop):
  gate, x = gsop
  # Shuffling every channel's positions independently keeps each channel's values (mean, variance)
  # but changes how channels co-vary: the second-order gate changes.
  rng = np.random.default_rng(2)
  flat = np.asarray(x).reshape(2, 36, 16)
  shuffled = np.stack([flat[:, rng.permutation(36), c] for c in range(16)], axis=-1).reshape(x.shape)
  chex.assert_trees_all_close(shuffled.mean((1, 2)), x.mean((1, 2)), rtol=1e-5)
  assert float(jnp.max(jnp.abs(gate(jnp.asarray(shuffled))[:, 0, 0] - gate(x)[:, 0, 0]))) > 1e-4


def test_gsop_train_mode_updates_batch_statistics():
  module = GlobalSecondOrderPooling(reduced_channels=4)
  x = positive_input((2, 4, 4, 8))
  variables = module.init(KEY, x)
  y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_shape(y, x.shape)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(moved))
