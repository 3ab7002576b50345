"""Activations whose CPU gradient XLA computes slowly as autodiff writes it.

`gelu(x)` (exact, erf) is `jax.nn.gelu(x, approximate=False)`. On CPU (the
`jaxcnn.layers.cpu_conv` formulations enabled, the default there) its backward
pass is one fused expression, Phi(x) + x * phi(x), instead of the chain autodiff
derives through erf: a ViT-Tiny train step spent ~4 elementwise passes over
each [tokens, 4 * width] activation on it (benchmarks/README.md). Same
function; GPU/TPU programs keep jax.nn.gelu.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.layers import cpu_conv

_INV_SQRT2 = np.float32(1 / np.sqrt(2))
_INV_SQRT_2PI = np.float32(1 / np.sqrt(2 * np.pi))


def _cdf(x):
  return 0.5 + 0.5 * lax.erf(x * _INV_SQRT2)


@jax.custom_vjp
def _exact_gelu(x):
  return (x.astype(jnp.float32) * _cdf(x.astype(jnp.float32))).astype(x.dtype)


def _exact_gelu_fwd(x):
  return _exact_gelu(x), x


def _exact_gelu_bwd(x, g):
  x32 = x.astype(jnp.float32)
  slope = _cdf(x32) + x32 * _INV_SQRT_2PI * jnp.exp(-0.5 * x32 * x32)
  return ((g.astype(jnp.float32) * slope).astype(x.dtype),)


_exact_gelu.defvjp(_exact_gelu_fwd, _exact_gelu_bwd)


def gelu(x, approximate: bool = False):
  """GELU; `approximate=True` is the tanh form (`jax.nn.gelu`'s, unchanged on every backend)."""
  if approximate or not cpu_conv.enabled():
    return jax.nn.gelu(x, approximate=approximate)
  return _exact_gelu(x)
