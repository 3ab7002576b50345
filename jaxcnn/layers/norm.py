"""Local Response Normalization (Krizhevsky et al. 2012, sec. 3.3), on NHWC.

    b[c] = a[c] / (k + alpha / size * sum_{c' in window(c)} a[c']**2) ** beta

The window holds `size` channels around c (`size // 2` before, `(size - 1) // 2`
after, cut at the edges). `alpha` is divided by `size`, as in
`torch.nn.LocalResponseNorm` and Caffe, so their settings carry over. The
paper's formula sums without that division: its k=2, n=5, alpha=1e-4,
beta=0.75 are `LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)`.
No parameters.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax


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
