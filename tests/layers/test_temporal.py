"""Temporal Adaptive Module: shapes, parameter count, the adaptive temporal convolution, branch properties."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers.temporal import TemporalAdaptiveModule, adaptive_temporal_conv
from jaxcnn.utils import param_count

KEY = jax.random.key(0)


def tam_count(frames, channels, k=3):
  hidden = channels // 4
  global_branch = frames * 2 * frames + 2 * (2 * frames) + 2 * frames * k  # FC, BN, FC (no biases)
  local_branch = k * channels * hidden + 2 * hidden + hidden * channels    # conv_k, BN, conv_1x1
  return global_branch + local_branch


@pytest.mark.parametrize("frames,channels,k", [(8, 16, 3), (4, 32, 5)])
def test_tam_shape_and_parameter_count(frames, channels, k):
  clip = jax.ShapeDtypeStruct((2, frames, 5, 5, channels), jnp.float32)
  module = TemporalAdaptiveModule(kernel_size=k)
  variables = jax.eval_shape(module.init, KEY, clip)
  assert param_count(variables["params"]) == tam_count(frames, channels, k)
  chex.assert_shape(jax.eval_shape(module.apply, variables, clip), clip.shape)


def test_adaptive_temporal_conv_identity_shift_and_reference():
  x = jax.random.normal(KEY, (2, 6, 3, 3, 4))
  one_hot = lambda tap: jnp.broadcast_to(jax.nn.one_hot(tap, 3), (2, 4, 3))
  chex.assert_trees_all_close(adaptive_temporal_conv(x, one_hot(1)), x)                   # centre tap: identity
  shifted = adaptive_temporal_conv(x, one_hot(2))                                          # last tap: x[t + 1]
  chex.assert_trees_all_close(shifted[:, :-1], x[:, 1:])
  np.testing.assert_array_equal(shifted[:, -1], 0.0)
  kernel = jax.random.uniform(jax.random.key(1), (2, 4, 3))
  xs, ks = np.asarray(x), np.asarray(kernel)
  padded = np.pad(xs, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
  expected = sum(padded[:, k:k + 6] * ks[:, None, None, None, :, k] for k in range(3))
  chex.assert_trees_all_close(adaptive_temporal_conv(x, kernel), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tam():
  module = TemporalAdaptiveModule()
  clip = jax.random.normal(KEY, (2, 8, 4, 4, 16))
  variables = module.init(KEY, clip)
  run = jax.jit(lambda x: module.apply(variables, x, mutable=["intermediates"]))
  return run, clip


def test_tam_output_is_the_adaptive_kernel_applied_to_the_reweighted_clip(tam):
  run, clip = tam
  out, state = run(clip)
  weights = state["intermediates"]["local_weights"][0]
  kernel = state["intermediates"]["kernel"][0]
  chex.assert_shape(weights, (2, 8, 1, 1, 16))  # one weight per frame and channel
  chex.assert_shape(kernel, (2, 16, 3))         # one kernel per sample and channel
  assert bool(jnp.all((weights > 0) & (weights < 1)))
  chex.assert_trees_all_close(kernel.sum(-1), jnp.ones((2, 16)), rtol=1e-6)  # softmax: a convex combination
  chex.assert_trees_all_close(out, adaptive_temporal_conv(clip * weights, kernel), rtol=1e-5, atol=1e-6)


def test_tam_keeps_a_temporally_constant_clip_constant_away_from_the_ends(tam):
  """A static clip: the local weights are equal wherever the K-tap window fits (frames 1..6), and the
  kernel sums to one, so frames 2..5 come out as x * w, identical in time (an identity on constants)."""
  run, clip = tam
  static = jnp.broadcast_to(clip[:, :1], clip.shape)
  out, state = run(static)
  weights = state["intermediates"]["local_weights"][0]
  chex.assert_trees_all_close(weights[:, 1:7], jnp.broadcast_to(weights[:, 3:4], weights[:, 1:7].shape), rtol=1e-5)
  expected = static[:, 2:6] * weights[:, 3:4]
  chex.assert_trees_all_close(out[:, 2:6], expected, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(out[:, 0] - expected[:, 0]))) > 1e-4  # zero padding shows at the ends


def test_tam_train_mode_and_errors():
  module = TemporalAdaptiveModule()
  clip = jnp.ones((2, 4, 2, 2, 8))
  variables = module.init(KEY, clip)
  out, updates = module.apply(variables, clip, train=True, mutable=["batch_stats"])
  chex.assert_shape(out, clip.shape)
  assert set(updates["batch_stats"]) == {"local_bn", "global_bn"}
  with pytest.raises(UserError, match="clips"):
    module.init(KEY, jnp.ones((2, 4, 4, 8)))
  with pytest.raises(UserError, match="odd"):
    TemporalAdaptiveModule(kernel_size=2).init(KEY, clip)
