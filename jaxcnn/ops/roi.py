"""RoI pooling on NHWC features: roi_align, roi_pool and MultiScaleRoIAlign's level mapping.

Semantics are torchvision's CPU kernels (torchvision.ops.roi_align / roi_pool);
only the layout differs: features are [N, H, W, C] and outputs [..., PH, PW, C].

Boxes come in one of two fixed-shape forms:
  * [K, 5] rows (batch_index, x1, y1, x2, y2), torchvision's Tensor[K, 5] form
    -> output [K, PH, PW, C];
  * [N, R, 4] per-image padded boxes (x1, y1, x2, y2), image n's boxes in row n
    -> output [N, R, PH, PW, C] (padding rows give some value; mask them after).
Coordinates are in the input image's frame; `spatial_scale` maps them onto the
feature map (1/stride).

roi_align is computed as two small matrices per RoI: bilinear interpolation
separates into a weight over rows times a weight over columns (and so does
torchvision's out-of-range test), so averaging the sample grid of each bin
gives A_y [PH, H] and A_x [PW, W] and the output is A_y . F . A_x^T, two
matmuls. `sampling_ratio` > 0 samples that many points per bin side, as
torchvision; `sampling_ratio` <= 0 is torchvision's adaptive grid
ceil(roi_size / output_size) per side, which needs a static bound: at most
`max_sampling_ratio` (default 8) points per side are taken, so the result equals
torchvision's whenever ceil(roi_height / PH) and ceil(roi_width / PW) are
<= max_sampling_ratio (feature-map units), and uses max_sampling_ratio evenly
spaced samples beyond that. Working memory is K x PH x W x C floats for the
intermediate product; `roi_batch` processes the RoIs in chunks of that size
(lax.map) to bound it.
"""
import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import UserError

Size = Union[int, Tuple[int, int]]
_HIGHEST = lax.Precision.HIGHEST


def _pair(size: Size) -> Tuple[int, int]:
  if isinstance(size, int):
    return size, size
  size = tuple(int(s) for s in size)
  if len(size) != 2:
    raise UserError(f"output_size must be an int or (height, width), got {size}")
  return size


def _split_boxes(features, boxes):
  features = jnp.asarray(features)
  boxes = jnp.asarray(boxes)
  if features.ndim != 4:
    raise UserError(f"RoI ops expect NHWC features [N, H, W, C], got shape {features.shape}")
  if boxes.ndim == 2 and boxes.shape[-1] == 5:
    return features, boxes, True
  if boxes.ndim == 3 and boxes.shape[-1] == 4 and boxes.shape[0] == features.shape[0]:
    return features, boxes, False
  raise UserError(f"RoI boxes must be [K, 5] (batch_index, x1, y1, x2, y2) or [N, R, 4] per image with "
                  f"N={features.shape[0]}; got shape {boxes.shape}")


def _div_f32(num, den: int):
  """float32(num / den), correctly rounded as the C++ kernels' division, for int32 num >= 1 and a small int den.

  XLA:CPU's vectorised float division may be off by an ulp, and roi_pool's
  floor/ceil of bin edges turns that ulp into a whole row, so the quotient is
  rounded here in integers: N = num * 2^k with 2^23 <= N / den < 2^24, the
  24-bit mantissa N // den rounded half to even, scaled back by 2^-k.
  """
  num = num.astype(jnp.int32)
  e = jnp.floor(jnp.log2(num.astype(jnp.float32) / den)).astype(jnp.int32)
  k = 23 - e
  lo, hi = den * 2 ** 23, den * 2 ** 24
  k = jnp.where(jnp.left_shift(num, k) < lo, k + 1, k)
  k = jnp.where(jnp.left_shift(num, k) >= hi, k - 1, k)
  n = jnp.left_shift(num, k)
  m, rem = n // den, n % den
  m = m + ((2 * rem > den) | ((2 * rem == den) & (m % 2 == 1))).astype(jnp.int32)
  scale = lax.bitcast_convert_type(jnp.left_shift(127 - k, 23), jnp.float32)  # exactly 2^-k (exp2 is approximate)
  return m.astype(jnp.float32) * scale


def _ceil_div(size, den: int):
  """ceil(size / den) for float size >= 0, exact at integer quotients (where a 1-ulp division error would bite)."""
  c = jnp.ceil(size / den)
  c = jnp.where((c - 1) * den >= size, c - 1, c)
  return jnp.where(c * den < size, c + 1, c)


def _align_axis(start, end, out, length, sampling_ratio, max_grid, aligned):
  """Row (or column) weights [..., out, length] of roi_align for RoIs spanning [start, end] (feature units)."""
  size = end - start
  if not aligned:
    size = jnp.maximum(size, 1.0)
  bin_size = size / out
  if sampling_ratio > 0:
    grid = jnp.full(size.shape, sampling_ratio, jnp.int32)
  else:
    grid = jnp.minimum(_ceil_div(size, out), max_grid).astype(jnp.int32)
  p = jnp.arange(out, dtype=size.dtype)[:, None]
  i = jnp.arange(max_grid)[None, :]
  b, g, s = bin_size[..., None, None], grid[..., None, None], start[..., None, None]
  y = s + p * b + (i + 0.5).astype(size.dtype) * b / jnp.maximum(g, 1).astype(size.dtype)  # [..., out, max_grid]
  use = (i < g) & ~((y < -1.0) | (y > length))
  y = jnp.maximum(y, 0.0)
  low = jnp.floor(y).astype(jnp.int32)
  at_end = low >= length - 1
  low = jnp.where(at_end, length - 1, low)
  high = jnp.where(at_end, length - 1, low + 1)
  frac = jnp.where(at_end, 0.0, y - low.astype(y.dtype))
  w = ((1.0 - frac)[..., None] * jax.nn.one_hot(low, length, dtype=y.dtype)
       + frac[..., None] * jax.nn.one_hot(high, length, dtype=y.dtype))
  w = jnp.sum(jnp.where(use[..., None], w, 0.0), axis=-2)
  return w / jnp.maximum(grid, 1).astype(y.dtype)[..., None, None]


def _align_weights(xyxy, height, width, output_size, spatial_scale, sampling_ratio, max_grid, aligned):
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (xyxy[..., j] * spatial_scale - offset for j in range(4))
  ay = _align_axis(y1, y2, output_size[0], height, sampling_ratio, max_grid, aligned)
  ax = _align_axis(x1, x2, output_size[1], width, sampling_ratio, max_grid, aligned)
  return ay, ax


def _chunked(fn, args, roi_batch):
  if roi_batch is None:
    return fn(*args)
  # lax.map hands fn one RoI at a time (vmapped within a chunk); fn expects a leading RoI axis
  return lax.map(lambda a: fn(*(x[None] for x in a))[0], args, batch_size=roi_batch)


@functools.partial(jax.jit, static_argnames=("output_size", "sampling_ratio", "aligned", "max_sampling_ratio",
                                             "roi_batch"))
def roi_align(features, boxes, output_size: Size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False, max_sampling_ratio: int = 8, roi_batch: Optional[int] = None) -> jax.Array:
  """torchvision.ops.roi_align on NHWC features; see the module docstring for box forms and bounds."""
  features, boxes, flat = _split_boxes(features, boxes)
  out = _pair(output_size)
  _, height, width, _ = features.shape
  max_grid = int(sampling_ratio) if sampling_ratio > 0 else int(max_sampling_ratio)
  if max_grid < 1:
    raise UserError(f"max_sampling_ratio must be >= 1, got {max_sampling_ratio}")
  features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
  boxes = boxes.astype(features.dtype)

  def weights(xyxy):
    return _align_weights(xyxy, height, width, out, spatial_scale, int(sampling_ratio), max_grid, aligned)

  if flat:
    def pool(rois):
      ay, ax = weights(rois[:, 1:])
      onehot = jax.nn.one_hot(rois[:, 0].astype(jnp.int32), features.shape[0], dtype=features.dtype)
      rows = jnp.einsum("kph,kn,nhwc->kpwc", ay, onehot, features, precision=_HIGHEST)
      return jnp.einsum("kpwc,kqw->kpqc", rows, ax, precision=_HIGHEST)
    return _chunked(pool, (boxes,), roi_batch)

  def pool_image(fmap, xyxy):
    ay, ax = weights(xyxy)
    rows = jnp.einsum("rph,hwc->rpwc", ay, fmap, precision=_HIGHEST)
    return jnp.einsum("rpwc,rqw->rpqc", rows, ax, precision=_HIGHEST)
  return jax.vmap(lambda f, b: _chunked(lambda x: pool_image(f, x), (b,), roi_batch))(features, boxes)


def _round_half_away(x):
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _pool_axis(start, end, out, length):
  """Masks [..., out, length] of roi_pool's bins along one axis (integer RoI edges, as torchvision)."""
  bin_size = _div_f32(jnp.maximum(end - start + 1, 1), out)
  p = jnp.arange(out, dtype=jnp.float32)
  lo = jnp.floor(p * bin_size[..., None]).astype(jnp.int32) + start[..., None].astype(jnp.int32)
  hi = jnp.ceil((p + 1) * bin_size[..., None]).astype(jnp.int32) + start[..., None].astype(jnp.int32)
  lo = jnp.clip(lo, 0, length)
  hi = jnp.clip(hi, 0, length)
  idx = jnp.arange(length)
  return (idx >= lo[..., None]) & (idx < hi[..., None]), hi <= lo


@functools.partial(jax.jit, static_argnames=("output_size", "roi_batch"))
def roi_pool(features, boxes, output_size: Size, spatial_scale: float = 1.0,
             roi_batch: Optional[int] = None) -> jax.Array:
  """torchvision.ops.roi_pool (Fast R-CNN's max pooling over quantised bins) on NHWC features.

  RoI edges are rounded half away from zero after scaling, bins are
  [floor(p * bin), ceil((p + 1) * bin)) clipped to the map, and an empty bin gives 0.
  The max is taken over columns, then rows, so the working memory is
  K x PW x H x C (use `roi_batch` to chunk).
  """
  features, boxes, flat = _split_boxes(features, boxes)
  ph, pw = _pair(output_size)
  _, height, width, _ = features.shape

  def pool_one(fmap, xyxy):
    e = _round_half_away(xyxy * spatial_scale)
    mh, empty_h = _pool_axis(e[..., 1], e[..., 3], ph, height)  # [R, PH, H]
    mw, empty_w = _pool_axis(e[..., 0], e[..., 2], pw, width)  # [R, PW, W]
    neg = jnp.array(-jnp.inf, fmap.dtype)
    cols = jnp.max(jnp.where(mw[..., None, :, None], fmap[None, None], neg), axis=3)  # [R, PW, H, C]
    val = jnp.max(jnp.where(mh[:, :, None, :, None], cols[:, None], neg), axis=3)  # [R, PH, PW, C]
    empty = empty_h[:, :, None] | empty_w[:, None, :]
    return jnp.where(empty[..., None], jnp.zeros((), fmap.dtype), val)

  if flat:
    def pool(rois):
      # one RoI at a time against its own image keeps the intermediate at PW x H x C per RoI
      return jax.vmap(lambda r: pool_one(features[r[0].astype(jnp.int32)], r[None, 1:].astype(jnp.float32))[0])(rois)
    return _chunked(pool, (boxes,), roi_batch)
  return jax.vmap(lambda f, b: _chunked(lambda x: pool_one(f, x.astype(jnp.float32)), (b,), roi_batch))(
      features, boxes)


def infer_scale(feature_size: int, image_size: int) -> float:
  """torchvision's _infer_scale: the power of two nearest feature_size / image_size."""
  return 2.0 ** round(math.log2(feature_size / image_size))


def roi_level_mapper(boxes, k_min: int, k_max: int, canonical_scale: float = 224.0, canonical_level: int = 4,
                     eps: float = 1e-6) -> jax.Array:
  """FPN level of each xyxy box [..., 4] (image coordinates) -> int32 [...] in [0, k_max - k_min].

  torchvision's LevelMapper (Lin et al. 2017, eq. 1):
  floor(k0 + log2(sqrt(area) / 224) + eps) clamped to [k_min, k_max], minus k_min.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  s = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
  lvl = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + jnp.float32(eps))
  return (jnp.clip(lvl, k_min, k_max).astype(jnp.int32) - k_min).astype(jnp.int32)


def multiscale_roi_align(features: Sequence[jax.Array], boxes, output_size: Size, sampling_ratio: int,
                         image_size: Tuple[int, int], canonical_scale: float = 224.0, canonical_level: int = 4,
                         aligned: bool = False, max_sampling_ratio: int = 8,
                         roi_batch: Optional[int] = None) -> jax.Array:
  """torchvision.ops.MultiScaleRoIAlign's forward on a list of NHWC maps (finest first).

  Scales are inferred as torchvision does (power of two nearest map height /
  image height, `image_size` = (height, width) of the padded batch), each box
  goes to the level `roi_level_mapper` gives, and is aligned there. With
  fixed shapes every box is aligned on every level and the level's result
  selected, so the cost is that of len(features) roi_align calls.
  """
  if not features:
    raise UserError("multiscale_roi_align needs at least one feature map")
  scales = [infer_scale(f.shape[1], image_size[0]) for f in features]
  results = [roi_align(f, boxes, output_size, s, sampling_ratio, aligned, max_sampling_ratio, roi_batch)
             for f, s in zip(features, scales)]
  if len(features) == 1:
    return results[0]
  k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
  xyxy = jnp.asarray(boxes)[..., 1:] if jnp.ndim(boxes) == 2 else jnp.asarray(boxes)
  levels = roi_level_mapper(xyxy, k_min, k_max, canonical_scale, canonical_level)
  out = results[0]
  for i, r in enumerate(results[1:], start=1):
    out = jnp.where((levels == i)[..., None, None, None], r, out)
  return out
