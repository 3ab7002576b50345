"""Pooling with PyTorch's size rules, against direct loops over the windows; the CPU max-pool against lax."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.errors import UserError
from jaxcnn.layers import adaptive_avg_pool, avg_pool, cpu_conv, max_pool, pool
from jaxcnn.layers.pool import pool_output_size


def _windows(size, window, stride, padding, ceil_mode):
  """(start, end) of every window along one axis, in unpadded coordinates, per PyTorch."""
  out = pool_output_size(size, window, stride, padding, ceil_mode)
  return [(i * stride - padding, i * stride - padding + window) for i in range(out)]


def _reference(x, window, stride, padding, ceil_mode, reduce):
  h_windows = _windows(x.shape[1], window, stride, padding, ceil_mode)
  w_windows = _windows(x.shape[2], window, stride, padding, ceil_mode)
  out = np.zeros((x.shape[0], len(h_windows), len(w_windows), x.shape[3]), np.float32)
  for i, (h0, h1) in enumerate(h_windows):
    for j, (w0, w1) in enumerate(w_windows):
      patch = x[:, max(h0, 0):h1, max(w0, 0):w1]
      if reduce == "max":
        out[:, i, j] = patch.max(axis=(1, 2))
      else:  # padding cells count as zeros; the overhang past the padding does not count
        cells = (min(h1, x.shape[1] + padding) - h0) * (min(w1, x.shape[2] + padding) - w0)
        out[:, i, j] = patch.sum(axis=(1, 2)) / cells
  return out


@pytest.mark.parametrize("size,window,stride,padding,ceil_mode,expected", [
    (112, 3, 2, 0, True, 56),   # GoogLeNet maxpool1
    (112, 3, 2, 0, False, 55),
    (14, 2, 2, 0, True, 7),
    (13, 2, 2, 0, True, 7),     # the last window hangs over the edge
    (5, 3, 2, 1, True, 3),      # ceil would give 4, but that window would start in the padding
    (32, 3, 2, 0, True, 16),    # NIN CIFAR
    (55, 3, 2, 0, False, 27),   # AlexNet
])
def test_output_size_is_pytorchs(size, window, stride, padding, ceil_mode, expected):
  assert pool_output_size(size, window, stride, padding, ceil_mode) == expected


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("size,window,stride,padding,ceil_mode", [
    (7, 3, 2, 0, True), (8, 3, 2, 0, True), (8, 3, 2, 1, False), (5, 3, 2, 1, True),
    (6, 3, 1, 1, True), (9, 2, 2, 0, False),
])
def test_pooling_matches_direct_windows(reduce, size, window, stride, padding, ceil_mode):
  x = np.random.default_rng(0).normal(size=(2, size, size + 1, 3)).astype(np.float32)
  pool = max_pool if reduce == "max" else avg_pool
  got = pool(jnp.asarray(x), window, stride, padding, ceil_mode)
  chex.assert_trees_all_close(got, _reference(x, window, stride, padding, ceil_mode, reduce), atol=1e-6)


def test_too_small_input_is_a_user_error():
  with pytest.raises(UserError, match="too small"):
    max_pool(jnp.zeros((1, 1, 1, 1)), 3, 2)


@pytest.mark.parametrize("size,out", [(13, 6), (7, 7), (1, 7), (10, 4), (5, 3), (6, 1)])
def test_adaptive_avg_pool_uses_torchvision_bins(size, out):
  x = np.random.default_rng(1).normal(size=(2, size, size, 4)).astype(np.float32)
  expected = np.zeros((2, out, out, 4), np.float32)
  for i in range(out):
    h0, h1 = (i * size) // out, -(-((i + 1) * size) // out)
    for j in range(out):
      w0, w1 = (j * size) // out, -(-((j + 1) * size) // out)
      expected[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  got = jax.jit(adaptive_avg_pool, static_argnums=1)(jnp.asarray(x), out)
  chex.assert_shape(got, (2, out, out, 4))
  chex.assert_trees_all_close(got, expected, atol=1e-6)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pooling_gradients_under_jit(ceil_mode):
  """Training needs these gradients: max_pool's goes to each window's maximum, avg_pool's is spread evenly."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  grad_max = jax.jit(jax.grad(lambda x: max_pool(x, 3, 2, 1, ceil_mode).sum()))(x)
  windows = max_pool(x, 3, 2, 1, ceil_mode).size
  assert float(grad_max.sum()) == windows  # one unit of gradient per window, on its maximum
  chex.assert_trees_all_close(grad_max, jax.grad(lambda x: max_pool(x, 3, 2, 1, ceil_mode).sum())(x))
  grad_avg = jax.jit(jax.grad(lambda x: avg_pool(x, 2, 2, 0, ceil_mode).sum()))(x)
  assert float(grad_avg[0, 0, 0, 0]) == 0.25


# ----------------------------------------------------------------------------- CPU max-pool

def _lax_max_pool(x, window, stride, padding, ceil_mode):
  """The lax path of `max_pool` (what JAXCNN_CPU_CONV=0 and GPU/TPU run): reduce_window over -inf padding."""
  pads = pool._pads(x, (window, window), (stride, stride), (padding, padding), ceil_mode)
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), ((0, 0), *pads, (0, 0)))


@functools.lru_cache(maxsize=None)
def _jitted_vjp(pool_fn, window, stride, padding, ceil_mode):
  """jit(x, g -> (pooled x, x's gradient for cotangent g)), compiled once per pooling and dtype."""
  def run(x, g):
    y, vjp = jax.vjp(lambda x: pool_fn(x, window, stride, padding, ceil_mode), x)
    return y, vjp(g)[0]
  return jax.jit(run)


def _inputs(kind, shape, dtype, rng):
  x = rng.normal(size=shape)
  if kind == "relu":  # most windows tie at zero, as after a ReLU
    x = np.maximum(x, 0)
  elif kind == "zeros":
    x = np.zeros(shape)
  elif kind == "few_values":  # ties between non-zero values, and -inf inputs tying with the padding
    x = rng.integers(-1, 2, size=shape).astype(np.float64)
    x[rng.random(shape) < 0.2] = -np.inf
  elif kind == "nan":
    x[rng.random(shape) < 0.1] = np.nan
  return jnp.asarray(x, dtype)


POOLINGS = [  # (height, width, window, stride, padding, ceil_mode)
    (12, 12, 3, 2, 1, False),  # ResNet's stem
    (13, 11, 3, 2, 0, True),   # GoogLeNet (the last windows hang over the edge)
    (9, 8, 3, 1, 1, True),
    (12, 10, 2, 2, 0, False),  # LeNet
    (11, 9, 2, 2, 0, True),
    (11, 13, 3, 2, 1, True),
    (15, 14, 5, 3, 2, False),  # up to 4 windows overlap on a pixel in each direction
    (2, 5, 3, 2, 0, True),     # the last tap row meets no input pixel (GoogLeNet at its smallest)
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "relu", "zeros", "few_values", "nan"])
@pytest.mark.parametrize("height,width,window,stride,padding,ceil_mode", POOLINGS)
def test_cpu_max_pool_equals_lax_exactly(height, width, window, stride, padding, ceil_mode, kind, dtype):
  """Values and gradients bit for bit, ties included; the cotangent spans 1e-8..1e8, so the order in
  which overlapping windows' gradients are summed into a pixel matters too."""
  assert cpu_conv.enabled()
  rng = np.random.default_rng(height * 100 + width)
  x = _inputs(kind, (2, height, width, 3), dtype, rng)
  out_shape = jax.eval_shape(lambda x: _lax_max_pool(x, window, stride, padding, ceil_mode), x).shape
  g = jnp.asarray(rng.normal(size=out_shape) * 10.0 ** rng.integers(-8, 9, size=out_shape), dtype)
  y_ref, dx_ref = _jitted_vjp(_lax_max_pool, window, stride, padding, ceil_mode)(x, g)
  y, dx = _jitted_vjp(max_pool, window, stride, padding, ceil_mode)(x, g)
  assert y.dtype == dx.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))
  # Without jit too (the eager forward is `_tap_max_pool` itself, not its fwd rule).
  np.testing.assert_array_equal(np.asarray(max_pool(x, window, stride, padding, ceil_mode), np.float32),
                                np.asarray(y_ref, np.float32))


def test_ties_go_to_the_first_maximum_in_raster_order():
  """A window of zeros sends its gradient to its top-left pixel (XLA's choice), and only there."""
  dx = jax.grad(lambda x: max_pool(x, 2, 2).sum())(jnp.zeros((1, 4, 4, 1)))
  expected = np.zeros((4, 4), np.float32)
  expected[::2, ::2] = 1
  np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_cpu_max_pool_gradient_has_no_select_and_scatter():
  """The CPU formulation is what a jitted gradient runs (the lax path's gradient is select_and_scatter)."""
  x = jnp.zeros((2, 12, 12, 4))
  ours = jax.jit(jax.grad(lambda x: max_pool(x, 3, 2, 1).sum())).lower(x).as_text()
  reference = jax.jit(jax.grad(lambda x: _lax_max_pool(x, 3, 2, 1, False).sum())).lower(x).as_text()
  assert "select_and_scatter" in reference
  assert "select_and_scatter" not in ours


def test_lax_path_when_cpu_formulations_are_off(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "0")
  x = jnp.zeros((2, 12, 12, 4))
  text = jax.jit(jax.grad(lambda x: max_pool(x, 3, 2, 1).sum())).lower(x).as_text()
  assert "select_and_scatter" in text
