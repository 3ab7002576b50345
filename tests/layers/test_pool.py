"""Pooling with PyTorch's size rules, against direct loops over the windows."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers import adaptive_avg_pool, avg_pool, max_pool
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
