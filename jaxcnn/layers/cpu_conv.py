"""Faster formulations of 2-D convolutions for XLA:CPU, exact and per backend.

jaxlib 0.10 hands 2-D float32 convolutions to YNNPACK (`__ynn_fusion`). That
is fast for the forward and input-gradient convolutions, but (measured in
benchmarks/conv_micro.py):

* the weight gradient, a convolution whose "kernel" is the whole output
  gradient map, runs 3-10x slower than the forward (1x1 kernels: 10-20x);
* depthwise and grouped convolutions run at a fraction of a GFLOP/s, their
  weight gradients 10-300x slower than their forwards;
* a strided transposed convolution's weight gradient (a convolution over a
  zero-dilated input) runs ~50x slower than its forward.

This module rewrites those cases into operations XLA:CPU runs well, with the
same arithmetic (no approximation; only the summation order changes):

* `pointwise_conv`: a 1x1 convolution (any stride) or a patchify convolution
  (kernel == stride, no padding, e.g. ViT's patch embedding) is one matmul,
  and so are its two gradients (row-major matmuls, see `_matmul_bwd`).
* `depthwise_conv` (a `custom_vjp`): forward and input gradient as fused
  shifted multiply-adds, the kernel gradient as one multi-output reduction.
* `conv_fast_weight_grad` (a `custom_vjp`): every other convolution keeps
  XLA's own forward and input-gradient convolutions; only the kernel gradient
  changes, to `weight_grad`: JAX's own weight-gradient convolution written
  with an input dilation that reads no inserted zero, so Eigen runs it
  instead of YNNPACK (which rejects input-dilated convolutions).
* `conv_transpose_fast_weight_grad` (a `custom_vjp`): strided transposed
  convolutions keep XLA's forward and input gradient; the kernel gradient is
  computed per output phase (sub-pixel), one `weight_grad` per phase.

Before any of them, `live_taps` drops the kernel taps that read only padding
for every output pixel (an atrous 3x3 whose rate is at least the feature map's
size, e.g. DeepLabV3's rate-36 ASPP branch on a 32x32 map, is exactly its
centre tap: a 1x1 convolution, so a matmul). Their products are zeros and
their kernel gradient is zero, which the slice's gradient gives back. An
atrous convolution that still reads mostly padding after that
(`use_tap_conv`: DeepLabV3's rate-24 branch on a 32x32 map, a quarter of its
multiply-adds live) computes each tap only over the outputs where it meets
pixels (`tap_conv`, one matmul per tap); with oneDNN, only its kernel
gradient is done that way (`onednn_conv_tap_weight_grad`), as oneDNN's own
falls back to an im2col gemm over the padded map there.

Ahead of all of these, float32 convolutions other than pointwise ones go to
oneDNN (the library PyTorch runs on CPU) through XLA FFI custom calls,
`jaxcnn.layers.onednn`, for the forward and both gradients, when its extension
can be built and loaded; otherwise the XLA rewrites above. (`weight_grad` is
faster than oneDNN's kernel gradient for a convolution measured alone, but in
a train step XLA fuses the BatchNorm/ReLU that produce its input into the
[C, H, W, N] transpose Eigen needs, and that fused transpose cost more than
oneDNN's whole kernel gradient: benchmarks/README.md.)

The choice comes from `mode()`, read when a function is traced (set the
variable before the first `jit` of a model): on a CPU default backend,
`JAXCNN_CPU_CONV` unset or `1`/`onednn` gives 'onednn', `xla` the rewrites
only, `0`/`false`/`off`/`no` plain `lax`. GPU and TPU programs are untouched. The `custom_vjp`s are
reverse-mode only (`jax.jvp`/`jacfwd` through them raise); set
`JAXCNN_CPU_CONV=0` for forward-mode differentiation on CPU.
"""
import functools
import os
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.errors import UserError
from jaxcnn.layers import onednn

ENV_VAR = "JAXCNN_CPU_CONV"
NHWC = ("NHWC", "HWIO", "NHWC")
_NHWC_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
_FLOAT_TYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

Pads = Tuple[Tuple[int, int], Tuple[int, int]]


_MODES = {"0": "off", "false": "off", "off": "off", "no": "off", "xla": "xla", "1": "onednn",
          "onednn": "onednn", "": "onednn"}


def mode() -> str:
  """'off' (plain lax), 'xla' (this module's rewrites) or 'onednn' (oneDNN first), for a trace now."""
  if jax.default_backend() != "cpu":
    return "off"
  value = os.environ.get(ENV_VAR, "1").strip().lower()
  if value not in _MODES:
    raise UserError(f"{ENV_VAR}={value!r} is not one of 1/onednn, xla, 0/off")
  return _MODES[value]


def enabled() -> bool:
  """True when convolutions traced now should use the CPU formulations."""
  return mode() != "off"


def is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  """True when `dimension_numbers` mean NHWC input, HWIO kernel, NHWC output."""
  if len(lhs_shape) != 4 or dimension_numbers is None:
    return False
  dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _NHWC_SPECS


def supported_dtypes(lhs, rhs, preferred_element_type) -> bool:
  """float32 or bfloat16 operands of one type, accumulating in that type or float32."""
  if lhs.dtype != rhs.dtype or jnp.dtype(lhs.dtype) not in _FLOAT_TYPES:
    return False
  return preferred_element_type is None or jnp.dtype(preferred_element_type) in (
      jnp.dtype(lhs.dtype), jnp.dtype(jnp.float32))


def explicit_pads(padding, in_spatial, kernel_spatial, strides, rhs_dilation) -> Pads:
  """'SAME' / 'VALID' / 'SAME_LOWER' or (low, high) pairs -> (low, high) pairs."""
  if isinstance(padding, str):
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_spatial, rhs_dilation)]
    return tuple(lax.padtype_to_pads(in_spatial, effective, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _pad_spatial(x, pads: Pads):
  """Zero-pads (or crops, for negative pads) the two spatial dims of an NHWC array."""
  if all(p == (0, 0) for p in pads):
    return x
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _tap(xp, i, j, out_hw, strides):
  """The input pixels that kernel tap (i, j) (dilation applied) meets, one per output pixel."""
  (oh, ow), (sh, sw) = out_hw, strides
  return lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1,
                                      xp.shape[3]), (1, sh, sw, 1))


def _result_type(dtype, preferred_element_type):
  return jnp.dtype(preferred_element_type) if preferred_element_type is not None else jnp.dtype(dtype)


# ----------------------------------------------------------------------------- 1x1 and patchify

def is_pointwise(kernel_spatial, strides, pads, rhs_dilation) -> bool:
  """1x1 kernels without padding, or kernels that tile the input (kernel == stride, no padding)."""
  if any(p != (0, 0) for p in pads):
    return False
  if tuple(kernel_spatial) == (1, 1):
    return True
  return tuple(kernel_spatial) == tuple(strides) and tuple(rhs_dilation) == (1, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(a, b, precision):
  """[m, p] @ [p, k] accumulated in float32, with plain row-major matmuls in the backward pass."""
  return lax.dot(a, b, precision=precision, preferred_element_type=jnp.float32)


def _matmul_fwd(a, b, precision):
  return _matmul(a, b, precision), (a, b)


def _matmul_bwd(precision, res, dy):
  # Autodiff gives the same two products, but XLA:CPU is then free to lay out `dy` transposed for
  # the kernel gradient, inside its producer (e.g. a BatchNorm backward fusion, which then writes
  # with a stride of the whole map: 5x slower). The barrier pins `a` and `dy` row-major, so the
  # kernel gradient is one transposed-lhs matmul (Eigen) and the input gradient a plain one.
  a, b = res
  dy = dy.astype(a.dtype)
  a, dy = lax.optimization_barrier((a, dy))
  da = lax.dot(dy, lax.optimization_barrier(b.T), precision=precision, preferred_element_type=jnp.float32)
  db = lax.dot_general(a, dy, (((0,), (0,)), ((), ())), precision=precision,
                       preferred_element_type=jnp.float32)
  return da.astype(a.dtype), db.astype(b.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def pointwise_conv(x, w, strides, precision=None, preferred_element_type=None):
  """A 1x1 (any stride) or kernel == stride convolution without padding, as one matmul."""
  kh, kw, cin, cout = w.shape
  sh, sw = strides
  n, h, wd, _ = x.shape
  if (kh, kw) == (1, 1):
    patches = x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
  else:  # non-overlapping kh x kw patches, flattened in the kernel's (h, w, c) order
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    patches = x[:, :oh * kh, :ow * kw, :].reshape(n, oh, kh, ow, kw, cin)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, oh, ow, kh * kw * cin)
  rows = patches.shape[:3]
  y = _matmul(patches.reshape(-1, patches.shape[3]), w.reshape(kh * kw * cin, cout), precision)
  return y.reshape(*rows, cout).astype(_result_type(x.dtype, preferred_element_type))


# ----------------------------------------------------------------------------- depthwise

def is_depthwise(lhs_features, rhs_shape, feature_group_count) -> bool:
  return feature_group_count > 1 and feature_group_count == lhs_features and rhs_shape[2] == 1


def _depthwise_taps(x, kernel_spatial, strides, pads: Pads, rhs_dilation):
  """[(i, j, input pixels tap (i, j) meets)] of a depthwise convolution, in float32.

  With strides, the padded input is first split into its stride phases
  (x[a::sh, b::sw], materialised once), so that every tap is a unit-stride
  window of one phase: contiguous reads in the loops that consume the taps.
  """
  (kh, kw), (dh, dw_), (sh, sw) = kernel_spatial, rhs_dilation, strides
  xp = _pad_spatial(x.astype(jnp.float32), pads)
  n, hp, wp, c = xp.shape
  oh, ow = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw_ - 1) // sw + 1
  phases = {}
  taps = []
  for i in range(kh):
    for j in range(kw):
      a, b = (i * dh) % sh, (j * dw_) % sw
      if (a, b) not in phases:
        phase = xp if (sh, sw) == (1, 1) else lax.slice(xp, (0, a, b, 0), (n, hp, wp, c), (1, sh, sw, 1))
        phases[(a, b)] = phase if (sh, sw) == (1, 1) else lax.optimization_barrier(phase)
      top, left = (i * dh) // sh, (j * dw_) // sw
      taps.append((i, j, lax.slice(phases[(a, b)], (0, top, left, 0), (n, top + oh, left + ow, c))))
  return taps


def _depthwise_forward(x, w, strides, pads, rhs_dilation):
  """sum over taps of shifted input * tap weight: one fused elementwise loop, float32."""
  wf = w.astype(jnp.float32)
  y = None
  for i, j, tap in _depthwise_taps(x, w.shape[:2], strides, pads, rhs_dilation):
    term = tap * wf[i, j, 0]
    y = term if y is None else y + term
  return y


def _sum_all_but_channels(values):
  """One pass over equally shaped [n, h, w, c] arrays -> their [c] sums.

  A single variadic reduction reads every input once and keeps one
  accumulator per array; XLA:CPU runs it multi-threaded and vectorised,
  unlike one reduction per array (each handed to YNNPACK, one thread).
  """
  n, h, w, c = values[0].shape
  rows = [v.reshape(n * h, w, c) for v in values]
  zeros = tuple(jnp.zeros((), jnp.float32) for _ in rows)
  partial = lax.reduce(tuple(rows), zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
  return [p.sum(axis=0) for p in partial]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, w, strides, pads, rhs_dilation):
  return _depthwise_forward(x, w, strides, pads, rhs_dilation)


def _depthwise_fwd(x, w, strides, pads, rhs_dilation):
  return _depthwise_forward(x, w, strides, pads, rhs_dilation), (x, w)


def _input_phases(size, out_size, k, s, d, low):
  """For one spatial dim of dx: rows per phase, dy padding, and {phase r: [(tap, dy offset)]}.

  Input pixel s*a + r met tap i from output pixel a + offset, offset = (r + low - i*d) / s
  (when whole); offsets are shifted by the low padding of dy.
  """
  rows = -(-size // s)
  phases = {r: [(i, (r + low - i * d) // s) for i in range(k) if (r + low - i * d) % s == 0]
            for r in range(s)}
  offsets = [o for taps in phases.values() for _, o in taps] or [0]
  pad = (max(0, -min(offsets)), max(0, rows - 1 + max(offsets) - (out_size - 1)))
  phases = {r: [(i, o + pad[0]) for i, o in taps] for r, taps in phases.items()}
  return rows, pad, phases


def _depthwise_input_grad(dy, w, x_shape, strides, pads, rhs_dilation):
  """dx of the depthwise convolution, one stride-1 multiply-add loop per input phase.

  Each of the sh*sw input phases (pixels s*a + r) sums shifted slices of the
  zero-padded dy times its taps; interleaving the phases gives dx. Unlike the
  transpose JAX derives (a sum of interior-padded maps), no element tests
  which taps reach it.
  """
  (kh, kw), (n, h, wd, c) = w.shape[:2], x_shape
  (rows_h, pad_h, phases_h) = _input_phases(h, dy.shape[1], kh, strides[0], rhs_dilation[0], pads[0][0])
  (rows_w, pad_w, phases_w) = _input_phases(wd, dy.shape[2], kw, strides[1], rhs_dilation[1], pads[1][0])
  dyp = _pad_spatial(dy.astype(jnp.float32), (pad_h, pad_w))
  wf = w.astype(jnp.float32)
  phase_maps = []
  for rh in range(strides[0]):
    for rw in range(strides[1]):
      acc = jnp.zeros((n, rows_h, rows_w, c), jnp.float32)
      for i, oh in phases_h[rh]:
        for j, ow in phases_w[rw]:
          acc = acc + lax.slice(dyp, (0, oh, ow, 0), (n, oh + rows_h, ow + rows_w, c)) * wf[i, j, 0]
      phase_maps.append(acc)
  if len(phase_maps) == 1:
    dx = phase_maps[0]
  else:  # [sh, sw, n, a, b, c] -> [n, a, sh, b, sw, c]: pixel (s*a + r)
    dx = jnp.stack(phase_maps).reshape(strides[0], strides[1], n, rows_h, rows_w, c)
    dx = dx.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows_h * strides[0], rows_w * strides[1], c)
  return dx[:, :h, :wd, :]


def _depthwise_bwd(strides, pads, rhs_dilation, res, dy):
  x, w = res
  dx = _depthwise_input_grad(dy, w, x.shape, strides, pads, rhs_dilation).astype(x.dtype)
  # Kernel gradient: per tap, sum over pixels of shifted input * dy, all taps in one pass.
  dyf = dy.astype(jnp.float32)
  taps = _depthwise_taps(x, w.shape[:2], strides, pads, rhs_dilation)
  sums = _sum_all_but_channels([tap * dyf for _, _, tap in taps])
  dw = jnp.stack(sums).reshape(w.shape)
  return dx, dw.astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x, w, strides, pads: Pads, rhs_dilation, preferred_element_type=None):
  """Depthwise convolution (groups == input channels, any channel multiplier) as shifted multiply-adds.

  Computed in float32 (as XLA's convolution accumulates) and rounded once.
  Forward and input gradient are fused elementwise loops; the kernel
  gradient is one multi-output reduction. XLA:CPU's own grouped convolutions
  are 10-30x slower for these shapes.
  """
  cin, cout = x.shape[3], w.shape[3]
  if cout != cin:  # channel multiplier m: output channel c * m + q reads input channel c
    x = jnp.repeat(x, cout // cin, axis=3)
  y = _depthwise(x, w, tuple(strides), tuple(map(tuple, pads)), tuple(rhs_dilation))
  return y.astype(_result_type(x.dtype, preferred_element_type))


# ----------------------------------------------------------------------------- weight gradient

def weight_grad(x, dy, kernel_spatial, strides, pads: Pads, rhs_dilation, feature_group_count=1,
                precision=None):
  """d(conv(x, w))/dw contracted with `dy`, in HWIO, computed in float32.

  dw[i, j, c, o] = sum_{n, p, q} xpad[n, p*sh + i*dh, q*sw + j*dw, c] * dy[n, p, q, o]
  is the convolution JAX's transpose rule emits (x with batch and features
  swapped, `dy` as a kernel as large as the image), except that the rows are
  written with an input dilation B=2: xpad dilated by B, read with window
  stride B*dh and kernel dilation B*sh, meets exactly the same pixels (the
  inserted zeros are never read). XLA:CPU's YNNPACK rewrite does not take
  input-dilated convolutions, so Eigen runs it, 2-8x faster for this shape.
  Grouped convolutions: one such convolution per group.
  """
  kh, kw = kernel_spatial
  (sh, sw), (dh, dw_) = strides, rhs_dilation
  _, h, wd, cin = x.shape
  oh, ow, cout = dy.shape[1:]
  dilate = 2

  def window_pads(size, out, k, s, d, pad, b):
    # Low pad as given; high pad so that exactly k windows fit (a strided forward may leave rows unread).
    return b * pad[0], b * ((k - 1) * d + (out - 1) * s - pad[0] - (size - 1))

  padding = (window_pads(h, oh, kh, sh, dh, pads[0], dilate), window_pads(wd, ow, kw, sw, dw_, pads[1], 1))
  groups = feature_group_count
  cin_g, cout_g = cin // groups, cout // groups
  parts = []
  for g in range(groups):
    xg = x if groups == 1 else x[..., g * cin_g:(g + 1) * cin_g]
    dyg = dy if groups == 1 else dy[..., g * cout_g:(g + 1) * cout_g]
    out = lax.conv_general_dilated(
        xg, dyg, window_strides=(dilate * dh, dw_), padding=padding, lhs_dilation=(dilate, 1),
        rhs_dilation=(dilate * sh, sw), dimension_numbers=("CHWN", "IHWO", "CHWN"), precision=precision,
        preferred_element_type=jnp.float32)                                # [cout_g, kh, kw, cin_g]
    parts.append(out.transpose(1, 2, 3, 0))
  return parts[0] if groups == 1 else jnp.concatenate(parts, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def conv_fast_weight_grad(x, w, strides, pads, rhs_dilation, feature_group_count, precision,
                          preferred_element_type):
  """`lax.conv_general_dilated` (NHWC/HWIO) whose weight gradient is `weight_grad`.

  Forward and input gradient are XLA's own convolutions, unchanged.
  """
  return _xla_conv(x, w, strides, pads, rhs_dilation, feature_group_count, precision,
                   preferred_element_type)


def _xla_conv(x, w, strides, pads, rhs_dilation, feature_group_count, precision, preferred_element_type):
  return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=rhs_dilation, dimension_numbers=NHWC,
                                  feature_group_count=feature_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)


def _conv_fwd(x, w, strides, pads, rhs_dilation, feature_group_count, precision, preferred_element_type):
  y = _xla_conv(x, w, strides, pads, rhs_dilation, feature_group_count, precision, preferred_element_type)
  return y, (x, w)


def _conv_bwd(strides, pads, rhs_dilation, feature_group_count, precision, preferred_element_type, res, dy):
  x, w = res
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, rhs_dilation, feature_group_count,
                                              precision, preferred_element_type), x)
  (dx,) = input_vjp(dy)
  dw = weight_grad(x, dy.astype(x.dtype), w.shape[:2], strides, pads, rhs_dilation, feature_group_count,
                   precision)
  return dx, dw.astype(w.dtype)


conv_fast_weight_grad.defvjp(_conv_fwd, _conv_bwd)


def _live_tap_range(size, out, k, s, d, low):
  """(first, last + 1) of the taps along one dim that meet a real input pixel for some output pixel.

  Tap i reads input rows o * s + i * d - low, o < out; the taps that do form one run.
  """
  live = [i for i in range(k) if i * d - low <= size - 1 and (out - 1) * s + i * d - low >= 0]
  return (live[0], live[-1] + 1) if live else (0, k)


def live_taps(x_shape, w, strides, pads: Pads, rhs_dilation):
  """(w, pads, rhs_dilation) without the kernel taps that read only padding; the same convolution."""
  kernel, new_pads, dilation = [], [], []
  for dim in range(2):
    size, k, s, d = x_shape[1 + dim], w.shape[dim], strides[dim], rhs_dilation[dim]
    low, high = pads[dim]
    out = (size + low + high - (k - 1) * d - 1) // s + 1
    first, stop = _live_tap_range(size, out, k, s, d, low) if out > 0 else (0, k)
    new_k = stop - first
    new_low = low - first * d
    new_high = (out - 1) * s + (new_k - 1) * d + 1 - size - new_low
    if new_low < 0 or new_high < 0:  # keep non-negative padding (oneDNN's and the rewrites' contract)
      first, new_k, new_low, new_high = 0, k, low, high
    kernel.append((first, first + new_k))
    new_pads.append((new_low, new_high))
    dilation.append(d if new_k > 1 else 1)
  if kernel == [(0, w.shape[0]), (0, w.shape[1])]:
    return w, pads, rhs_dilation
  (h0, h1), (w0, w1) = kernel
  return w[h0:h1, w0:w1], tuple(new_pads), tuple(dilation)


def _tap_spans(size, out, k, d, low):
  """[(tap i, first output, stop output, first input)] along one dim of a stride-1 convolution.

  Output o reads input o + i*d - low through tap i; only the outputs whose
  input is a real pixel are kept (taps that meet none are left out).
  """
  spans = []
  for i in range(k):
    first, stop = max(0, low - i * d), min(out, size + low - i * d)
    if stop > first:
      spans.append((i, first, stop, first + i * d - low))
  return spans


def live_fraction(x_shape, kernel_spatial, strides, pads: Pads, rhs_dilation) -> float:
  """Share of a convolution's multiply-adds (taps x output pixels) whose input is not padding."""
  share = 1.0
  for dim in range(2):
    size, k, s, d = x_shape[1 + dim], kernel_spatial[dim], strides[dim], rhs_dilation[dim]
    low, high = pads[dim]
    out = (size + low + high - (k - 1) * d - 1) // s + 1
    if out <= 0:
      return 1.0
    live = sum(1 for o in range(out) for i in range(k) if 0 <= o * s + i * d - low < size)
    share *= live / (k * out)
  return share


# An atrous convolution whose taps meet real pixels for at most this share of their outputs goes to
# `tap_conv`. DeepLabV3's rate-24 ASPP branch on a 32x32 map (0.25) runs its three passes 1.5-2.5x
# faster that way (oneDNN's kernel gradient there is its im2col gemm); rate 12 (0.56) runs slower
# than on oneDNN's direct kernels (benchmarks/README.md, DeepLabV3).
TAP_CONV_MAX_LIVE = 0.4


def use_tap_conv(x_shape, w_shape, strides, pads: Pads, rhs_dilation, feature_group_count) -> bool:
  """True for the sparse-tap case `tap_conv` is for: stride 1, no groups, mostly (not only) padding."""
  return (feature_group_count == 1 and tuple(strides) == (1, 1) and tuple(rhs_dilation) != (1, 1)
          and 0.0 < live_fraction(x_shape, w_shape[:2], strides, pads, rhs_dilation) <= TAP_CONV_MAX_LIVE)


def tap_conv(x, w, pads: Pads, rhs_dilation, precision=None, preferred_element_type=None):
  """A stride-1 (dilated) convolution as one matmul per kernel tap over the outputs where it meets pixels.

  y[rows, cols] += x[rows + i*dh - low_h, cols + j*dw - low_w] @ w[i, j] for
  each tap, restricted to the output rectangle whose input is real: the
  padding is never multiplied, so a heavily dilated convolution costs its
  live share of a dense one. Both gradients follow by autodiff: per tap, a
  transposed-lhs matmul for the kernel and a matmul whose result is added
  into the input gradient's rectangle (`_matmul`'s row-major backward).
  Accumulates in float32.
  """
  n, h, wd, c = x.shape
  kh, kw, _, cout = w.shape
  (dh, dw_) = rhs_dilation
  out_h = h + pads[0][0] + pads[0][1] - (kh - 1) * dh
  out_w = wd + pads[1][0] + pads[1][1] - (kw - 1) * dw_
  y = None
  for i, r0, r1, a in _tap_spans(h, out_h, kh, dh, pads[0][0]):
    for j, c0, c1, b in _tap_spans(wd, out_w, kw, dw_, pads[1][0]):
      rows, cols = r1 - r0, c1 - c0
      xs = lax.slice(x, (0, a, b, 0), (n, a + rows, b + cols, c)).reshape(n * rows * cols, c)
      part = _matmul(xs, w[i, j], precision).reshape(n, rows, cols, cout)
      part = _pad_spatial(part, ((r0, out_h - r1), (c0, out_w - c1)))
      y = part if y is None else y + part
  return y.astype(_result_type(x.dtype, preferred_element_type))


def tap_weight_grad(x, dy, kernel_spatial, pads: Pads, rhs_dilation, precision=None):
  """Kernel gradient of `tap_conv` (HWIO, float32): per live tap, x's rectangle^T @ dy's rectangle.

  Taps that meet no pixel get zeros. `x` and `dy` are pinned row-major (see
  `_matmul_bwd`), so each tap is one transposed-lhs matmul over its rectangle.
  """
  n, h, wd, c = x.shape
  _, out_h, out_w, cout = dy.shape
  (kh, kw), (dh, dw_) = kernel_spatial, rhs_dilation
  x, dy = lax.optimization_barrier((x, dy.astype(x.dtype)))
  taps = {}
  for i, r0, r1, a in _tap_spans(h, out_h, kh, dh, pads[0][0]):
    for j, c0, c1, b in _tap_spans(wd, out_w, kw, dw_, pads[1][0]):
      rows, cols = r1 - r0, c1 - c0
      xs = lax.slice(x, (0, a, b, 0), (n, a + rows, b + cols, c)).reshape(-1, c)
      dys = lax.slice(dy, (0, r0, c0, 0), (n, r1, c1, cout)).reshape(-1, cout)
      taps[(i, j)] = lax.dot_general(xs, dys, (((0,), (0,)), ((), ())), precision=precision,
                                     preferred_element_type=jnp.float32)
  zero = jnp.zeros((c, cout), jnp.float32)
  return jnp.stack([taps.get((i, j), zero) for i in range(kh) for j in range(kw)]).reshape(kh, kw, c, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def onednn_conv_tap_weight_grad(x, w, pads: Pads, rhs_dilation):
  """A stride-1 float32 `onednn.conv` whose kernel gradient is `tap_weight_grad`.

  For the sparse-tap case (`use_tap_conv`): oneDNN's direct forward and
  input-gradient kernels skip the padding there as well, but its kernel
  gradient falls back to an im2col gemm over the whole padded map.
  """
  return onednn.forward(x, w, (1, 1), pads, rhs_dilation, 1)


def _onednn_tap_fwd(x, w, pads, rhs_dilation):
  return onednn.forward(x, w, (1, 1), pads, rhs_dilation, 1), (x, w)


def _onednn_tap_bwd(pads, rhs_dilation, res, dy):
  x, w = res
  dx = onednn.input_grad(dy, w, x.shape, (1, 1), pads, rhs_dilation, 1)
  return dx, tap_weight_grad(x, dy, w.shape[:2], pads, rhs_dilation).astype(w.dtype)


onednn_conv_tap_weight_grad.defvjp(_onednn_tap_fwd, _onednn_tap_bwd)


def conv_nhwc(x, w, strides, pads: Pads, rhs_dilation=(1, 1), feature_group_count=1, precision=None,
              preferred_element_type=None):
  """The CPU formulation of an NHWC/HWIO convolution with explicit padding (no input dilation).

  In mode 'onednn', when oneDNN takes these operands and its extension
  loads: every non-pointwise convolution (forward and both gradients) on
  oneDNN. Pointwise (1x1, patchify) convolutions stay matmuls. Everything
  else: `conv_nhwc_xla`. Kernel taps that read only padding are dropped first (`live_taps`).
  """
  strides, rhs_dilation, pads = tuple(strides), tuple(rhs_dilation), tuple(map(tuple, pads))
  w, pads, rhs_dilation = live_taps(x.shape, w, strides, pads, rhs_dilation)
  pointwise = feature_group_count == 1 and is_pointwise(w.shape[:2], strides, pads, rhs_dilation)
  tap = use_tap_conv(x.shape, w.shape, strides, pads, rhs_dilation, feature_group_count)
  if (mode() == "onednn" and not pointwise
      and onednn.supports(x, w, pads, feature_group_count, preferred_element_type) and onednn.available()):
    if tap:
      return onednn_conv_tap_weight_grad(x, w, pads, rhs_dilation)
    return onednn.conv(x, w, strides, pads, rhs_dilation, feature_group_count)
  if tap:
    return tap_conv(x, w, pads, rhs_dilation, precision, preferred_element_type)
  return conv_nhwc_xla(x, w, strides, pads, rhs_dilation, feature_group_count, precision,
                       preferred_element_type)


def conv_nhwc_xla(x, w, strides, pads: Pads, rhs_dilation=(1, 1), feature_group_count=1, precision=None,
                  preferred_element_type=None):
  """`conv_nhwc` in XLA alone: matmul, depthwise or fast-kernel-gradient rewrite."""
  strides, rhs_dilation = tuple(strides), tuple(rhs_dilation)
  if feature_group_count == 1 and is_pointwise(w.shape[:2], strides, pads, rhs_dilation):
    return pointwise_conv(x, w, strides, precision, preferred_element_type)
  if is_depthwise(x.shape[3], w.shape, feature_group_count):
    return depthwise_conv(x, w, strides, pads, rhs_dilation, preferred_element_type)
  return conv_fast_weight_grad(x, w, strides, tuple(map(tuple, pads)), rhs_dilation, feature_group_count,
                               precision, preferred_element_type)


# ----------------------------------------------------------------------------- transposed conv

def transpose_pads(kernel_spatial, strides, padding, rhs_dilation) -> Pads:
  """The (low, high) padding of the dilated input, as `lax.conv_transpose` derives it.

  'SAME' / 'VALID' describe the forward convolution this one transposes;
  (low, high) pairs are used as given (lax's default, inconsistent on purpose).
  """
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  pads = []
  for k, s, d in zip(kernel_spatial, strides, rhs_dilation):
    k = (k - 1) * d + 1
    if padding == "SAME":
      total = k + s - 2
      low = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "VALID":
      total = k + s - 2 + max(k - s, 0)
      low = k - 1
    else:
      raise ValueError(f"padding {padding!r} is not 'SAME', 'VALID' or (low, high) pairs")
    pads.append((low, total - low))
  return tuple(pads)


def _phase_taps(k, s, d, low):
  """For one spatial dim: [(phase r, tap u, input offset)] with output s*m + r reading x[m + offset]."""
  taps = []
  for r in range(s):
    for u in range(k):
      q = r + u * d - low  # position in the dilated input, relative to output s*m
      if q % s == 0:
        taps.append((r, u, q // s))
  return taps


def _phases(k, s, d, low):
  """{phase r: [(tap u, input offset)]} for one spatial dim (see `_phase_taps`)."""
  phases = {}
  for r, u, offset in _phase_taps(k, s, d, low):
    phases.setdefault(r, []).append((u, offset))
  return phases


def transpose_weight_grad(x, dy, kernel_spatial, strides, pads: Pads, rhs_dilation=(1, 1), precision=None):
  """Kernel gradient of `conv_transpose_reference`, phase by phase, in float32.

  Output phase (rh, rw) (pixels s*m + r) is an ordinary stride-1 convolution
  of `x` with the taps of that phase, so its kernel gradient is `weight_grad`
  of `x` and the phase's pixels of `dy`. Every tap belongs to one phase: the
  work is that of the taps, with no zero taps and no dilated input.
  """
  kh, kw = kernel_spatial
  n, h, wd, cin = x.shape
  out_h, out_w, cout = dy.shape[1:]
  (sh, sw), (dh, dw_) = strides, rhs_dilation
  phases_h, phases_w = _phases(kh, sh, dh, pads[0][0]), _phases(kw, sw, dw_, pads[1][0])
  taps = {}
  for rh, taps_h in phases_h.items():
    for rw, taps_w in phases_w.items():
      dy_r = dy[:, rh::sh, rw::sw, :]
      rows, cols = dy_r.shape[1:3]
      if rows == 0 or cols == 0:
        continue
      first_h, first_w = min(o for _, o in taps_h), min(o for _, o in taps_w)
      win_h, win_w = max(o for _, o in taps_h) - first_h + 1, max(o for _, o in taps_w) - first_w + 1
      phase_pads = ((-first_h, rows + win_h - 1 - h + first_h), (-first_w, cols + win_w - 1 - wd + first_w))
      g = weight_grad(x, dy_r, (win_h, win_w), (1, 1), phase_pads, (1, 1), 1, precision)
      for uh, oh in taps_h:
        for uw, ow in taps_w:
          taps[(uh, uw)] = g[oh - first_h, ow - first_w]
  zero = jnp.zeros((cin, cout), jnp.float32)
  return jnp.stack([taps.get((uh, uw), zero) for uh in range(kh) for uw in range(kw)]).reshape(
      kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_transpose_fast_weight_grad(x, w, strides, pads, rhs_dilation, precision, preferred_element_type):
  """`conv_transpose_reference` whose kernel gradient is `transpose_weight_grad`.

  Forward and input gradient stay XLA's own convolutions.
  """
  return conv_transpose_reference(x, w, strides, pads, rhs_dilation, precision, preferred_element_type)


def _convt_fwd(x, w, strides, pads, rhs_dilation, precision, preferred_element_type):
  return conv_transpose_reference(x, w, strides, pads, rhs_dilation, precision, preferred_element_type), (x, w)


def _convt_bwd(strides, pads, rhs_dilation, precision, preferred_element_type, res, dy):
  x, w = res
  _, input_vjp = jax.vjp(lambda x_: conv_transpose_reference(x_, w, strides, pads, rhs_dilation, precision,
                                                             preferred_element_type), x)
  (dx,) = input_vjp(dy)
  dw = transpose_weight_grad(x, dy.astype(x.dtype), w.shape[:2], strides, pads, rhs_dilation, precision)
  return dx, dw.astype(w.dtype)


conv_transpose_fast_weight_grad.defvjp(_convt_fwd, _convt_bwd)


def conv_transpose_nhwc(x, w, strides, pads: Pads, rhs_dilation=(1, 1), precision=None,
                        preferred_element_type=None):
  """The CPU formulation of `lax.conv_transpose` for NHWC inputs and HWIO kernels."""
  strides, rhs_dilation = tuple(strides), tuple(rhs_dilation)
  pads = tuple(map(tuple, pads))
  if strides == (1, 1):  # no input dilation: an ordinary convolution with these pads
    return conv_nhwc(x, w, (1, 1), pads, rhs_dilation, 1, precision, preferred_element_type)
  return conv_transpose_fast_weight_grad(x, w, strides, pads, rhs_dilation, precision, preferred_element_type)


def conv_transpose_reference(x, w, strides, pads: Pads, rhs_dilation=(1, 1), precision=None,
                             preferred_element_type=None):
  """`lax.conv_transpose` with explicit dilated-input pads (what `conv_transpose_nhwc` reproduces)."""
  return lax.conv_general_dilated(x, w, (1, 1), pads, lhs_dilation=tuple(strides),
                                  rhs_dilation=tuple(rhs_dilation), dimension_numbers=NHWC,
                                  precision=precision, preferred_element_type=preferred_element_type)

