"""Pooling with PyTorch's size rules, on NHWC.

flax's `nn.max_pool` / `nn.avg_pool` cover the plain cases; the classic
networks also need what Caffe and torchvision do:

* `ceil_mode` (GoogLeNet, NIN, ZFNet): the output size is rounded up, and the
  last window may hang over the bottom/right edge, where it sees only the
  real pixels. As in PyTorch, a window may not *start* in the padding.
* `adaptive_avg_pool` (AlexNet, VGG, GoogLeNet's auxiliary heads): a fixed
  output size from any input size, with torchvision's bin edges
  `floor(i * n / out)` .. `ceil((i + 1) * n / out)`, so the heads of those
  models accept other input sizes and converted weights give the same logits.

An input too small for a pooling window is a `UserError` (PyTorch raises
too): the models that use these document their smallest input.
"""
from typing import Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.errors import UserError

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair) -> Tuple[int, int]:
  return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)


def pool_output_size(size: int, window: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> int:
  """PyTorch's pooled length of one axis (`torch.nn.MaxPool2d` docs)."""
  span = size + 2 * padding - window
  out = (-(-span // stride) if ceil_mode else span // stride) + 1
  # In ceil mode the last window must start inside the input or the left padding.
  if ceil_mode and (out - 1) * stride >= size + padding:
    out -= 1
  if out < 1:
    raise UserError(f"a {window}x{window}/{stride} pooling got a {size}-pixel wide map: the input "
                    f"image is too small for this model (see the model's docstring for its minimum size)")
  return out


def _pads(x, window, stride, padding, ceil_mode):
  """Per-axis (low, high) padding that gives PyTorch's output size."""
  pads = []
  for size, k, s, p in zip(x.shape[1:3], window, stride, padding):
    out = pool_output_size(size, k, s, p, ceil_mode)
    # Whatever the last window needs beyond the input; floor mode may leave rows unused.
    high = max(p, (out - 1) * s + k - size - p)
    pads.append((p, high))
  return pads


def max_pool(x, window: IntPair, stride: IntPair, padding: IntPair = 0, ceil_mode: bool = False):
  """`torch.nn.MaxPool2d(window, stride, padding, ceil_mode=...)` on NHWC."""
  window, stride, padding = _pair(window), _pair(stride), _pair(padding)
  pads = _pads(x, window, stride, padding, ceil_mode)
  # A NumPy (not jnp) init value: lax recognises the max monoid only for a concrete init, and only
  # then is the pooling differentiable under jit.
  init = np.array(-np.inf, x.dtype)
  return lax.reduce_window(x, init, lax.max, (1, *window, 1), (1, *stride, 1),
                           ((0, 0), *pads, (0, 0)))


def avg_pool(x, window: IntPair, stride: IntPair, padding: IntPair = 0, ceil_mode: bool = False):
  """`torch.nn.AvgPool2d(window, stride, padding, ceil_mode=...)` (count_include_pad=True) on NHWC.

  Each window is divided by the number of its cells inside the zero-padded
  input; the part of a ceil-mode window beyond the padding is not counted
  (PyTorch's and Caffe's rule).
  """
  window, stride, padding = _pair(window), _pair(stride), _pair(padding)
  pads = _pads(x, window, stride, padding, ceil_mode)
  dims, strides = (1, *window, 1), (1, *stride, 1)
  full = ((0, 0), *pads, (0, 0))
  summed = lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, strides, full)
  # Count the explicit padding as cells, the ceil-mode overhang not.
  h, w = x.shape[1:3]
  counted = np.ones((1, h + 2 * padding[0], w + 2 * padding[1], 1), np.float32)
  overhang = ((0, 0), *[(0, hi - p) for (_, hi), p in zip(pads, padding)], (0, 0))
  counts = lax.reduce_window(jnp.asarray(counted), 0.0, lax.add, dims, strides, overhang)
  return summed / counts.astype(x.dtype)


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
  """[out, size] averaging weights of torch's adaptive pooling bins along one axis."""
  weights = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -(-((i + 1) * size) // out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x, output_size: IntPair):
  """`torch.nn.AdaptiveAvgPool2d(output_size)` on NHWC (bins may overlap or repeat pixels)."""
  out_h, out_w = _pair(output_size)
  h, w = x.shape[1:3]
  if (h, w) == (out_h, out_w):
    return x
  if (out_h, out_w) == (1, 1):
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  rows = jnp.asarray(_adaptive_matrix(h, out_h), x.dtype)
  cols = jnp.asarray(_adaptive_matrix(w, out_w), x.dtype)
  # Two small matmuls: exact bin means, and their gradient is the same linear map transposed.
  x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", cols, x, precision=lax.Precision.HIGHEST)
