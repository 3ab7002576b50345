"""Local Response Normalization against the formula, channel by channel; LayerNorm against flax's."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers import LayerNorm, LocalResponseNorm, cpu_conv, layer_norm


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


# ----------------------------------------------------------------------------- LayerNorm

def _ln_grads(module, variables, x, weights):
  loss = lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)


@pytest.mark.parametrize("mode", ["1", "0"])  # CPU closed-form gradient, and autodiff of the forward
def test_layer_norm_matches_flax_values_and_gradients(mode, monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, mode)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 24)) * 3 + 1, jnp.float32)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  ref = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
  variables = ref.init(jax.random.PRNGKey(0), x)
  variables = jax.tree.map(lambda a: a + jnp.asarray(rng.normal(size=a.shape), a.dtype), variables)
  ours = LayerNorm(epsilon=1e-6)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(variables)
  (value, grads), (ref_value, ref_grads) = _ln_grads(ours, variables, x, weights), _ln_grads(ref, variables, x, weights)
  chex.assert_trees_all_close(value, ref_value, rtol=1e-5)
  chex.assert_trees_all_close(grads, ref_grads, atol=2e-5, rtol=1e-5)


def test_layer_norm_cpu_gradient_is_the_closed_form(monkeypatch):
  """On CPU the LayerNorm carries its own gradient rule (a custom_vjp); with the formulations off, autodiff's."""
  x = jnp.ones((2, 4, 8))
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  closed = jax.make_jaxpr(lambda x: layer_norm(x, jnp.ones(8), jnp.zeros(8), 1e-6))(x)
  monkeypatch.setenv(cpu_conv.ENV_VAR, "0")
  autodiff = jax.make_jaxpr(lambda x: layer_norm(x, jnp.ones(8), jnp.zeros(8), 1e-6))(x)
  assert "custom_vjp_call" in str(closed) and "custom_vjp_call" not in str(autodiff)


def test_layer_norm_bfloat16_keeps_dtypes(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.bfloat16)
  module = LayerNorm(dtype=jnp.bfloat16)
  variables = module.init(jax.random.PRNGKey(0), x)
  y = module.apply(variables, x)
  grads, dx = jax.grad(lambda v, x: module.apply(v, x).astype(jnp.float32).sum(), argnums=(0, 1))(variables, x)
  assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16
  assert grads["params"]["scale"].dtype == jnp.float32
  expected = nn.LayerNorm(epsilon=1e-6, dtype=jnp.bfloat16).apply(variables, x)
  chex.assert_trees_all_close(y.astype(jnp.float32), expected.astype(jnp.float32), atol=2e-2)


def test_layer_norm_without_scale_and_bias(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 10)), jnp.float32)
  variables = LayerNorm(use_scale=False, use_bias=False).init(jax.random.PRNGKey(0), x)
  assert variables == {} or not variables.get("params")
  y = LayerNorm(use_scale=False, use_bias=False).apply(variables, x)
  chex.assert_trees_all_close(y.mean(-1), jnp.zeros(3), atol=1e-6)
  chex.assert_trees_all_close(y.std(-1), jnp.ones(3), atol=1e-4)
