"""jaxcnn.layers.gelu: jax.nn.gelu's values and gradients, with a closed-form CPU backward."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers import cpu_conv, gelu


@pytest.mark.parametrize("mode", ["1", "0"])
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_gelu_matches_jax_values_and_gradients(mode, dtype, atol, monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, mode)
  x = jnp.asarray(np.linspace(-6, 6, 97), dtype)
  fn = lambda f: jax.jit(jax.value_and_grad(lambda x: jnp.sum(f(x).astype(jnp.float32) * jnp.cos(
      x.astype(jnp.float32)))))(x)
  value, grad = fn(gelu)
  ref_value, ref_grad = fn(lambda x: jax.nn.gelu(x, approximate=False))
  assert grad.dtype == dtype
  chex.assert_trees_all_close(value, ref_value, rtol=1e-5 if dtype == jnp.float32 else 1e-2)
  chex.assert_trees_all_close(grad.astype(jnp.float32), ref_grad.astype(jnp.float32), atol=atol)


def test_gelu_slope_is_cdf_plus_x_times_density(monkeypatch):
  """d/dx x Phi(x) = Phi(x) + x phi(x), against math.erf at points that tell the terms apart."""
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  points = [0.0, 8.0, -8.0, math.sqrt(2.0), -1.0]
  expected = [0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
              for x in points]
  slope = jax.vmap(jax.grad(gelu))(jnp.array(points, jnp.float32))
  chex.assert_trees_all_close(slope, jnp.array(expected, jnp.float32), atol=1e-6)
  assert abs(expected[3] - 1.1289) < 1e-4  # the slope's maximum, above 1


def test_approximate_gelu_is_jax_tanh_form(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  x = jnp.linspace(-3, 3, 13)
  chex.assert_trees_all_equal(gelu(x, approximate=True), jax.nn.gelu(x, approximate=True))
