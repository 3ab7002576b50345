"""Local Response Normalization against the formula, channel by channel."""
import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers import LocalResponseNorm


def _reference(x, size, alpha, beta, k):
  channels = x.shape[-1]
  out = np.empty_like(x)
  for c in range(channels):
    lo, hi = max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)
    out[..., c] = x[..., c] / (k + alpha / size * np.sum(x[..., lo:hi] ** 2, axis=-1)) ** beta
  return out


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 5e-4, 0.75, 2.0), (4, 1e-2, 0.5, 1.0), (1, 0.1, 1.0, 1.0)])
def test_matches_the_formula(size, alpha, beta, k):
  x = np.random.default_rng(0).normal(scale=3.0, size=(2, 3, 3, 9)).astype(np.float32)
  layer = LocalResponseNorm(size=size, alpha=alpha, beta=beta, k=k)
  variables = layer.init({}, jnp.asarray(x))
  assert not variables  # no parameters
  got = layer.apply(variables, jnp.asarray(x))
  chex.assert_trees_all_close(got, _reference(x, size, alpha, beta, k), rtol=1e-5)
  # The normalization really acts: with these inputs it changes every value noticeably.
  assert np.min(np.abs(np.asarray(got) / x - 1)) > 1e-4 or size == 1


def test_keeps_input_dtype_or_casts():
  x = jnp.ones((1, 2, 2, 6), jnp.bfloat16)
  assert nn.apply(lambda m, y: m(y), LocalResponseNorm())({}, x).dtype == jnp.bfloat16
  assert LocalResponseNorm(dtype=jnp.float32).apply({}, x).dtype == jnp.float32


def test_gradient_under_jit_matches_finite_differences():
  import jax
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7))
  f = lambda x: jnp.sum(LocalResponseNorm(size=5, alpha=0.5, beta=0.75, k=1.0).apply({}, x) ** 2)
  grad = jax.jit(jax.grad(f))(x)
  e = np.zeros(x.shape, np.float32)
  e[0, 1, 0, 3] = 1e-2
  numeric = (f(x + e) - f(x - e)) / 2e-2
  np.testing.assert_allclose(float(grad[0, 1, 0, 3]), float(numeric), rtol=2e-3)
