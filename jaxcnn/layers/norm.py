"""Local Response Normalization (Krizhevsky et al. 2012, sec. 3.3), on NHWC, and LayerNorm.

    b[c] = a[c] / (k + alpha / size * sum_{c' in window(c)} a[c']**2) ** beta

The window holds `size` channels around c (`size // 2` before, `(size - 1) // 2`
after, cut at the edges). `alpha` is divided by `size`, as in
`torch.nn.LocalResponseNorm` and Caffe, so their settings carry over. The
paper's formula sums without that division: its k=2, n=5, alpha=1e-4,
beta=0.75 are `LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)`.
No parameters.

`LayerNorm` is flax's `nn.LayerNorm` over the last axis (same parameters,
`scale` and `bias`), with statistics in float32 from the centred values. On
CPU (the `jaxcnn.layers.cpu_conv` formulations enabled, the default there) its
gradient is the closed form dx = rstd * (g' - mean(g') - xhat * mean(g' xhat)),
g' = g * scale, in two fused passes: autodiff of the forward made XLA:CPU
materialise broadcasts of [tokens, width] for each LayerNorm of a ViT step
(benchmarks/README.md). GPU/TPU programs differentiate the forward as usual.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.layers import cpu_conv


def local_response_norm(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
  """The normalization over the last (channel) axis of `x`."""
  ndim = x.ndim
  # A NumPy init value: lax differentiates reduce_window only when it sees the add monoid's 0.
  squares_sum = lax.reduce_window(
      jnp.square(x), np.array(0, x.dtype), lax.add,
      (1,) * (ndim - 1) + (size,), (1,) * ndim,
      ((0, 0),) * (ndim - 1) + ((size // 2, (size - 1) // 2),))
  return x / (k + (alpha / size) * squares_sum) ** beta


class LocalResponseNorm(nn.Module):
  """`torch.nn.LocalResponseNorm(size, alpha, beta, k)` over the channel axis (see module doc)."""
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 1.0
  dtype: Optional[Any] = None  # compute dtype; None keeps the input's

  @nn.compact
  def __call__(self, x):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    return local_response_norm(x, self.size, self.alpha, self.beta, self.k)


def _layer_norm_forward(x, scale, bias, epsilon):
  """(y, (xhat, rstd)) over the last axis, statistics in float32."""
  x32 = x.astype(jnp.float32)
  centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  rstd = lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + epsilon)
  xhat = centred * rstd
  return xhat * scale.astype(jnp.float32) + bias.astype(jnp.float32), (xhat, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_closed_form_grad(x, scale, bias, epsilon):
  return _layer_norm_forward(x, scale, bias, epsilon)[0]


def _ln_fwd(x, scale, bias, epsilon):
  y, (xhat, rstd) = _layer_norm_forward(x, scale, bias, epsilon)
  return y, (xhat, rstd, scale, bias, jnp.zeros((), x.dtype))  # the last: x's dtype, for dx


def _ln_bwd(epsilon, res, g):
  xhat, rstd, scale, bias, x_like = res
  g = g.astype(jnp.float32)
  gs = g * scale.astype(jnp.float32)
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  rows = tuple(range(g.ndim - 1))
  return (dx.astype(x_like.dtype), jnp.sum(g * xhat, axis=rows).astype(scale.dtype),
          jnp.sum(g, axis=rows).astype(bias.dtype))


_layer_norm_closed_form_grad.defvjp(_ln_fwd, _ln_bwd)


def layer_norm(x, scale, bias, epsilon: float):
  """LayerNorm of `x` over its last axis with [features] `scale` and `bias`, in float32."""
  if cpu_conv.enabled():
    return _layer_norm_closed_form_grad(x, scale, bias, epsilon)
  return _layer_norm_forward(x, scale, bias, epsilon)[0]


class LayerNorm(nn.Module):
  """`nn.LayerNorm` over the last axis (parameters `scale`, `bias`) with a fast CPU gradient.

  `use_scale=False` / `use_bias=False` drop the parameter (a constant 1 / 0 is used).
  """
  epsilon: float = 1e-6
  dtype: Optional[Any] = None  # output dtype; None keeps the input's
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = (self.param("scale", self.scale_init, features, self.param_dtype) if self.use_scale
             else jnp.ones(features, jnp.float32))
    bias = (self.param("bias", self.bias_init, features, self.param_dtype) if self.use_bias
            else jnp.zeros(features, jnp.float32))
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype or x.dtype)
