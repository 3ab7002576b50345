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

On CPU (`cpu_conv.enabled()`), `max_pool` is a `custom_vjp` of fused
elementwise loops over the window's taps (`_tap_max_pool`): XLA:CPU lowers
the gradient of `lax.reduce_window(max)` (select-and-scatter) to a
reduce-window over (value, index) pairs and a scatter, ~5x slower than
this formulation for ResNet's stem pool (benchmarks/pool_micro.py). Values
and gradients are bit-identical to the lax path, ties and the order of the
sums included (see `_first_max_index`, `_phase_taps`). Like `cpu_conv`'s
rewrites it is reverse-mode only: set `JAXCNN_CPU_CONV=0` for `jax.jvp`.
"""
import functools
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.errors import UserError
from jaxcnn.layers import cpu_conv

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
  if cpu_conv.enabled():
    return _tap_max_pool(x, window, stride, tuple(pads))
  # A NumPy (not jnp) init value: lax recognises the max monoid only for a concrete init, and only
  # then is the pooling differentiable under jit.
  init = np.array(-np.inf, x.dtype)
  return lax.reduce_window(x, init, lax.max, (1, *window, 1), (1, *stride, 1),
                           ((0, 0), *pads, (0, 0)))


# ----------------------------------------------------------------------------- CPU max-pool

def _tap_range(size, out, k_offset, stride, low):
  """Outputs [first, last] whose tap at `k_offset` lands inside the input."""
  first = max(0, -(-(low - k_offset) // stride))
  last = min(out - 1, (size - 1 + low - k_offset) // stride)
  return first, last


def _out_size(size, k, s, pads):
  return (size + sum(pads) - k) // s + 1


def _taps(x, window, stride, pads, rows, cols):
  """For outputs `rows` x `cols` ([start, stop) ranges): the input pixel each window tap meets, in raster order.

  Each tap is a strided slice of `x`, padded with -inf where its windows hang
  over the edge; the padded input itself is never materialised.
  """
  n, h, w, c = x.shape
  (kh, kw), (sh, sw) = window, stride
  oh, ow = rows[1] - rows[0], cols[1] - cols[0]
  neg_inf = np.array(-np.inf, x.dtype)
  taps = []
  for i in range(kh):
    first_h, last_h = _tap_range(h, rows[1], i, sh, pads[0][0])
    first_h = max(first_h, rows[0])
    for j in range(kw):
      first_w, last_w = _tap_range(w, cols[1], j, sw, pads[1][0])
      first_w = max(first_w, cols[0])
      if last_h < first_h or last_w < first_w:  # a tap that meets only padding here
        taps.append(jnp.full((n, oh, ow, c), neg_inf))
        continue
      row, col = first_h * sh + i - pads[0][0], first_w * sw + j - pads[1][0]
      inside = lax.slice(x, (0, row, col, 0), (n, row + (last_h - first_h) * sh + 1,
                                              col + (last_w - first_w) * sw + 1, c), (1, sh, sw, 1))
      taps.append(lax.pad(inside, neg_inf, ((0, 0, 0), (first_h - rows[0], rows[1] - 1 - last_h, 0),
                                            (first_w - cols[0], cols[1] - 1 - last_w, 0), (0, 0, 0))))
  return taps


def _interior_split(size, k, s, pads):
  """[start, stop) output ranges along one axis: windows over the low padding, wholly inside, over the high side."""
  out = _out_size(size, k, s, pads)
  ranges = [_tap_range(size, out, i, s, pads[0]) for i in range(k)]
  first = min(max(f for f, _ in ranges), out)
  last = max(min(l for _, l in ranges) + 1, first)
  return [(a, b) for a, b in ((0, first), (first, last), (last, out)) if b > a]


def _first_max_index(taps):
  """Index of the tap XLA's max-pool gradient picks in each window.

  XLA's select-and-scatter (with JAX's `ge` select) walks a window in raster
  order and moves to the next element unless `selected >= next`: the first
  maximum wins ties (windows of ReLU zeros), a tie with the -inf padding goes
  to the padding (dropped), and NaNs behave as in XLA too.
  """
  best, index = taps[0], jnp.zeros(taps[0].shape, jnp.int8 if len(taps) < 128 else jnp.int32)
  for t, tap in enumerate(taps[1:], start=1):
    move = ~(best >= tap)
    best = jnp.where(move, tap, best)
    index = jnp.where(move, jnp.asarray(t, index.dtype), index)
  return index


def _window_max(taps):
  y = taps[0]
  for tap in taps[1:]:
    y = lax.max(y, tap)
  return y


def _blockwise(x, window, stride, pads, per_block):
  """`per_block(taps)` (a tuple of [n, rows, cols, c] maps) over all outputs, one block at a time.

  The outputs whose windows lie wholly inside the input read plain strided
  slices; only the thin border blocks read -inf padding. XLA:CPU runs one
  fused loop over padded taps much slower, and writes a padded tap out
  first when it is read twice (by the maximum and by the index walk).
  """
  block_rows = []
  for rows in _interior_split(x.shape[1], window[0], stride[0], pads[0]):
    row = [per_block(_taps(x, window, stride, pads, rows, cols))
           for cols in _interior_split(x.shape[2], window[1], stride[1], pads[1])]
    block_rows.append([jnp.concatenate(parts, axis=2) for parts in zip(*row)])
  return tuple(jnp.concatenate(parts, axis=1) for parts in zip(*block_rows))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _tap_max_pool(x, window, stride, pads):
  """Max over the window taps: fused elementwise loops (what inference runs)."""
  return _blockwise(x, window, stride, pads, lambda taps: (_window_max(taps),))[0]


def _materialized(y, index):
  """`(y, index)` unchanged, but computed once into memory.

  XLA:CPU fuses cheap elementwise producers into each consumer (and removes
  optimization barriers before fusing). The backward pass reads every index at
  several shifted positions, so fused there the raster-order walk would be
  redone for each read: 3x slower. XLA does not fuse a reduction into a
  consumer that reuses its elements, so (y, index) go through a max-reduction
  against the identity (-inf, 0) of a stacked axis: same values, stored once.
  """
  inits = (np.array(-np.inf, y.dtype), np.array(0, index.dtype))
  stacked = (jnp.stack([y, jnp.full_like(y, inits[0])]), jnp.stack([index, jnp.zeros_like(index)]))
  return lax.reduce(stacked, inits, lambda a, b: (lax.max(a[0], b[0]), lax.max(a[1], b[1])), (0,))


def _tap_max_pool_fwd(x, window, stride, pads):
  y, index = _blockwise(x, window, stride, pads, lambda taps: (_window_max(taps), _first_max_index(taps)))
  y, index = _materialized(y, index)
  return y, (index, x.shape)


def _phase_taps(size, out_size, k, s, low):
  """One spatial axis of dx: rows per input phase, {phase r: [(tap, output offset)]}.

  Input pixel s*a + r is met by tap i of output a + offset, offset = (r + low - i) / s
  when whole. Taps are listed by increasing offset: XLA's scatter adds the
  outputs' gradients into a pixel in output order, and float sums depend on order.
  """
  rows = -(-size // s)
  phases = {r: sorted(((i, (r + low - i) // s) for i in range(k) if (r + low - i) % s == 0),
                      key=lambda tap: tap[1]) for r in range(s)}
  return rows, phases


def _shifted(v, offset_h, offset_w, rows_h, rows_w):
  """out[a, b] = v[a + offset_h, b + offset_w], zero outside v: [n, rows_h, rows_w, c]."""
  n, oh, ow, c = v.shape
  return lax.pad(v, np.array(0, v.dtype), ((0, 0, 0), (-offset_h, rows_h - oh + offset_h, 0),
                                           (-offset_w, rows_w - ow + offset_w, 0), (0, 0, 0)))


def _tap_max_pool_bwd(window, stride, pads, res, g):
  """Each output's gradient to its chosen tap, summed per input phase, phases interleaved."""
  index, (n, h, w, c) = res
  (kh, kw), (sh, sw) = window, stride
  rows_h, phases_h = _phase_taps(h, g.shape[1], kh, sh, pads[0][0])
  rows_w, phases_w = _phase_taps(w, g.shape[2], kw, sw, pads[1][0])
  zero = jnp.zeros((), g.dtype)
  phase_maps = []
  for rh in range(sh):
    for rw in range(sw):
      acc = jnp.zeros((n, rows_h, rows_w, c), g.dtype)
      for i, off_h in phases_h[rh]:
        for j, off_w in phases_w[rw]:
          chosen = jnp.where(index == i * kw + j, g, zero)
          acc = acc + _shifted(chosen, off_h, off_w, rows_h, rows_w)
      phase_maps.append(acc)
  if len(phase_maps) == 1:
    dx = phase_maps[0]
  else:  # [sh, sw, n, a, b, c] -> [n, a, sh, b, sw, c]: pixel (s*a + r)
    dx = jnp.stack(phase_maps).reshape(sh, sw, n, rows_h, rows_w, c)
    dx = dx.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows_h * sh, rows_w * sw, c)
  return (dx[:, :h, :w, :],)


_tap_max_pool.defvjp(_tap_max_pool_fwd, _tap_max_pool_bwd)


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


# ----------------------------------------------------------------------------- switches and unpooling

def max_pool_with_argmax(x, window: IntPair = 2, stride=None):
  """`torch.nn.functional.max_pool2d(x, window, stride, return_indices=True)` on NHWC: (values, indices).

  No padding, floor mode. `indices` (int32, the shape of `values`) are the
  "switches" of DeconvNet and SegNet: for each output, the flat position
  row * W + col of its maximum in its own (batch, channel) plane of the
  input, torch's convention. The window is walked in raster order with
  torch's rule (move on a larger value or a NaN): a tie goes to the first
  maximum, a NaN to the last NaN, and the gradient reaches only that pixel.
  One elementwise pass per tap, no stacked copy of the taps and no scatter
  in the gradient (2-3x faster on CPU than argmax over stacked taps).
  """
  window = _pair(window)
  stride = window if stride is None else _pair(stride)
  n, h, w, c = x.shape
  (kh, kw), (sh, sw) = window, stride
  out_h, out_w = pool_output_size(h, kh, sh), pool_output_size(w, kw, sw)
  values = tap = None
  for i in range(kh):
    for j in range(kw):
      here = lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, c),
                       (1, sh, sw, 1))
      if values is None:
        values, tap = here, jnp.zeros(here.shape, jnp.int32)
        continue
      move = (here > values) | jnp.isnan(here)
      values = jnp.where(move, here, values)
      tap = jnp.where(move, jnp.int32(i * kw + j), tap)
  rows = (jnp.arange(out_h) * sh)[:, None, None] + tap // kw
  cols = (jnp.arange(out_w) * sw)[None, :, None] + tap % kw
  return values, (rows * w + cols).astype(jnp.int32)


def max_unpool(x, indices, window: IntPair = 2, stride=None, output_size=None):
  """`torch.nn.functional.max_unpool2d(x, indices, window, stride, output_size=...)` on NHWC.

  Each value of x goes back to the input position its switch in `indices`
  names (from `max_pool_with_argmax` with the same window and stride); every
  other position is zero. `output_size` (H, W) is the pooled map's size
  (default torch's `(out - 1) * stride + window`); it must pool back to x's
  size, and must be given when pooling dropped a remainder row or column:
  the switches count positions in rows of the pooled map's width. Non-overlapping windows only (window <= stride), which makes the
  result a fixed-shape select per stride x stride block instead of a scatter.
  """
  window = _pair(window)
  stride = window if stride is None else _pair(stride)
  (kh, kw), (sh, sw) = window, stride
  n, out_h, out_w, c = x.shape
  if tuple(indices.shape) != tuple(x.shape):
    raise UserError(f"max_unpool: indices of shape {tuple(indices.shape)} do not match the values' {tuple(x.shape)}")
  if kh > sh or kw > sw:
    raise UserError(f"max_unpool supports non-overlapping windows only (window <= stride), got window "
                    f"{window} and stride {stride}")
  h, w = ((out_h - 1) * sh + kh, (out_w - 1) * sw + kw) if output_size is None else _pair(output_size)
  if h < kh or w < kw or (pool_output_size(h, kh, sh), pool_output_size(w, kw, sw)) != (out_h, out_w):
    raise UserError(f"max_unpool: output_size {(h, w)} does not pool to the input's {out_h}x{out_w} with "
                    f"window {window} and stride {stride}")
  rows, cols = indices // w, indices % w
  di = rows - (jnp.arange(out_h) * sh)[:, None, None]      # the switch's offset inside its block
  dj = cols - (jnp.arange(out_w) * sw)[None, :, None]
  here = (di[..., None, None] == jnp.arange(sh)[:, None]) & (dj[..., None, None] == jnp.arange(sw))
  blocks = jnp.where(here, x[..., None, None], jnp.zeros((), x.dtype))      # [n, oh, ow, c, sh, sw]
  y = blocks.transpose(0, 1, 4, 2, 5, 3).reshape(n, out_h * sh, out_w * sw, c)
  y = y[:, :h, :w]
  return jnp.pad(y, ((0, 0), (0, h - y.shape[1]), (0, w - y.shape[2]), (0, 0)))
