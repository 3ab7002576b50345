"""Max-pool switches and max-unpooling against torch's `max_pool2d(return_indices=True)` and `max_unpool2d`.

Inputs are small integers after a ReLU, so windows hold ties (several equal
maxima, all-zero windows): the switch must be torch's first maximum.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers.pool import max_pool, max_pool_with_argmax, max_unpool

torch = pytest.importorskip("torch")
F = torch.nn.functional

CASES = [(8, 8, 2, 2), (7, 9, 2, 2), (9, 12, 3, 3), (8, 11, 2, 3), (6, 6, (2, 3), (2, 3))]


def _tied_input(h, w, seed=0):
  rng = np.random.default_rng(seed)
  return np.maximum(rng.integers(-3, 4, (2, 3, h, w)), 0).astype(np.float32)


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("h,w,window,stride", CASES)
def test_switches_and_unpooling_are_torchs(h, w, window, stride):
  x = _tied_input(h, w)
  values, indices = F.max_pool2d(torch.from_numpy(x), window, stride, return_indices=True)
  unpooled = F.max_unpool2d(values, indices, window, stride, output_size=(h, w))

  pool = jax.jit(lambda a: max_pool_with_argmax(a, window, stride))
  got_values, got_indices = pool(_nhwc(x))
  assert got_indices.dtype == jnp.int32
  np.testing.assert_array_equal(got_values, _nhwc(values.numpy()))
  np.testing.assert_array_equal(got_indices, _nhwc(indices.numpy()))
  np.testing.assert_array_equal(got_values, max_pool(_nhwc(x), window, stride))

  unpool = jax.jit(lambda v, i: max_unpool(v, i, window, stride, output_size=(h, w)))
  np.testing.assert_array_equal(unpool(got_values, got_indices), _nhwc(unpooled.numpy()))


def test_nan_switches_are_torchs():
  x = _tied_input(6, 8)
  x[0, 0, 0, 1] = np.nan                      # after a value: the NaN is taken
  x[0, 1, 2, 2:4] = np.nan                    # two NaNs in one window: the last one
  x[1, 2, 4, 6] = np.nan
  values, indices = F.max_pool2d(torch.from_numpy(x), 2, 2, return_indices=True)
  got_values, got_indices = max_pool_with_argmax(_nhwc(x), 2)
  np.testing.assert_array_equal(got_indices, _nhwc(indices.numpy()))
  np.testing.assert_array_equal(got_values, _nhwc(values.numpy()))   # NaNs compare equal here


def test_default_output_size_is_torchs():
  x = _tied_input(6, 8)
  values, indices = F.max_pool2d(torch.from_numpy(x), 2, 2, return_indices=True)
  expected = _nhwc(F.max_unpool2d(values, indices, 2, 2).numpy())
  got = max_unpool(*max_pool_with_argmax(_nhwc(x), 2), 2)
  assert got.shape == expected.shape == (2, 6, 8, 3)
  np.testing.assert_array_equal(got, expected)


def test_gradients_are_torchs():
  x = np.random.default_rng(1).normal(size=(2, 3, 7, 10)).astype(np.float32)
  x[0, 0, :2, :2] = 1.0  # a tie: the gradient goes to the first maximum only
  upstream = np.random.default_rng(2).normal(size=(2, 3, 7, 10)).astype(np.float32)

  tx = torch.from_numpy(x).requires_grad_()
  values, indices = F.max_pool2d(tx, 2, 2, return_indices=True)
  weighted = F.max_unpool2d(values * 3.0, indices, 2, 2, output_size=(7, 10))
  (weighted * torch.from_numpy(upstream)).sum().backward()

  def loss(a):
    v, i = max_pool_with_argmax(a, 2)
    return jnp.sum(max_unpool(v * 3.0, i, 2, output_size=(7, 10)) * _nhwc(upstream))
  grad = jax.jit(jax.grad(loss))(_nhwc(x))
  np.testing.assert_allclose(grad, _nhwc(tx.grad.numpy()), rtol=1e-6, atol=1e-6)
  assert np.count_nonzero(grad[0, :2, :2, 0]) == 1


def test_unpooled_values_sit_at_the_maxima():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 8, 4)).astype(np.float32))
  values, indices = max_pool_with_argmax(x, 2)
  y = max_unpool(values, indices, 2, output_size=(8, 8))
  # One non-zero per 2x2 block, equal to the block's maximum and at its position.
  blocks = np.asarray(y).reshape(1, 4, 2, 4, 2, 4)
  assert np.all(np.count_nonzero(blocks, axis=(2, 4)) == 1)
  np.testing.assert_array_equal(np.where(np.asarray(y) != 0, np.asarray(x), 0), np.asarray(y))


@pytest.mark.parametrize("call,match", [
    (lambda v, i: max_unpool(v, i[:, :2], 2), "do not match"),
    (lambda v, i: max_unpool(v, i, 3, 2), "non-overlapping"),
    (lambda v, i: max_unpool(v, i, 2, output_size=(12, 8)), "does not pool"),
])
def test_bad_unpooling_arguments(call, match):
  values, indices = max_pool_with_argmax(jnp.zeros((1, 8, 8, 2)), 2)
  with pytest.raises(UserError, match=match):
    call(values, indices)


def test_too_small_input():
  with pytest.raises(UserError, match="too small"):
    max_pool_with_argmax(jnp.zeros((1, 1, 4, 2)), 2)
