"""Anchors (torchvision's AnchorGenerator and SSD's DefaultBoxGenerator) and the fixed-shape Matcher.

Anchors depend only on static shapes (image size, feature-map sizes), so the
generators compute them once with NumPy in float32, in torchvision's
arithmetic and order, and return a constant [A, 4] xyxy array (the same for
every image of a padded batch; torchvision returns one copy per image).

The matchers take a quality matrix [M, N] (ground truth x predictions, e.g.
box_iou(gt, anchors)) and a validity mask [M] for padded ground truth; an
invalid row can never be matched, and an image without valid ground truth
gets BELOW_LOW_THRESHOLD (-1, background) everywhere, which is what
torchvision's detectors assign to an empty image. They vmap over a batch.
"""
import math
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def retinanet_anchor_sizes(base_sizes: Sequence[int] = (32, 64, 128, 256, 512)) -> Tuple[Tuple[int, ...], ...]:
  """RetinaNet's three octave scales per level, truncated to int as torchvision: (32, 40, 50), (64, 80, 101), ..."""
  return tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in base_sizes)


class AnchorGenerator:
  """torchvision.models.detection.anchor_utils.AnchorGenerator (aspect ratio = height / width).

  sizes: one tuple of sizes per feature map; aspect_ratios: one tuple per map
  (or a single tuple for all). Per location, anchors run over ratios (outer)
  then sizes (inner); locations run row-major; levels are concatenated.
  """

  def __init__(self, sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
               aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),)):
    if not isinstance(sizes[0], (list, tuple)):
      sizes = tuple((s,) for s in sizes)
    if not isinstance(aspect_ratios[0], (list, tuple)):
      aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
    if len(sizes) != len(aspect_ratios):
      raise UserError(f"AnchorGenerator: {len(sizes)} size tuples but {len(aspect_ratios)} aspect-ratio tuples")
    self.sizes = tuple(tuple(s) for s in sizes)
    self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
    self.cell_anchors = [self._cell(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]

  @staticmethod
  def _cell(scales, ratios):
    scales = np.asarray(scales, np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))  # half to even, as torch.round

  def num_anchors_per_location(self):
    return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

  def __call__(self, image_size: Tuple[int, int], feature_shapes: Sequence[Tuple[int, int]]) -> jax.Array:
    """Anchors [sum_l H_l W_l A_l, 4] for a padded image (height, width) and the maps' (H_l, W_l)."""
    if len(feature_shapes) != len(self.cell_anchors):
      raise UserError(f"AnchorGenerator has {len(self.cell_anchors)} levels but got {len(feature_shapes)} "
                      "feature maps")
    out = []
    for (gh, gw), base in zip(feature_shapes, self.cell_anchors):
      sh, sw = image_size[0] // gh, image_size[1] // gw
      shift_y, shift_x = np.meshgrid(np.arange(gh) * sh, np.arange(gw) * sw, indexing="ij")
      shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4).astype(np.float32)
      out.append((shifts + base[None]).reshape(-1, 4))
    return jnp.asarray(np.concatenate(out, 0))


class DefaultBoxGenerator:
  """SSD default boxes, as torchvision.models.detection.anchor_utils.DefaultBoxGenerator.

  Per level k: scale s_k (from `scales`, or linear between min_ratio and
  max_ratio with a final 1.0), boxes (s_k, s_k), (s'_k, s'_k) with
  s'_k = sqrt(s_k s_{k+1}), then (s_k sqrt(r), s_k / sqrt(r)) and its
  transpose for each ratio r. Centres ((j + 0.5) / f_x, (i + 0.5) / f_y) with
  f = image / step (or the map size without `steps`). With clip=True the
  relative widths/heights are clamped to [0, 1] (before conversion; the
  centres are not clipped). Output: xyxy in pixels, locations row-major, the
  boxes of one location contiguous, levels concatenated.
  """

  def __init__(self, aspect_ratios: Sequence[Sequence[float]], min_ratio: float = 0.15, max_ratio: float = 0.9,
               scales: Optional[Sequence[float]] = None, steps: Optional[Sequence[int]] = None, clip: bool = True):
    if steps is not None and len(aspect_ratios) != len(steps):
      raise UserError(f"DefaultBoxGenerator: {len(aspect_ratios)} aspect-ratio lists but {len(steps)} steps")
    self.aspect_ratios = [list(a) for a in aspect_ratios]
    self.steps = steps
    self.clip = clip
    k = len(aspect_ratios)
    if scales is None:
      if k > 1:
        scales = [min_ratio + (max_ratio - min_ratio) * i / (k - 1.0) for i in range(k)] + [1.0]
      else:
        scales = [min_ratio, max_ratio]
    if len(scales) < k + 1:
      raise UserError(f"DefaultBoxGenerator needs {k + 1} scales for {k} levels, got {len(scales)}")
    self.scales = list(scales)
    self.wh_pairs = []
    for i in range(k):
      s, s_next = self.scales[i], math.sqrt(self.scales[i] * self.scales[i + 1])
      pairs = [[s, s], [s_next, s_next]]
      for r in self.aspect_ratios[i]:
        w, h = s * math.sqrt(r), s / math.sqrt(r)
        pairs += [[w, h], [h, w]]
      self.wh_pairs.append(np.asarray(pairs, np.float32))

  def num_anchors_per_location(self):
    return [2 + 2 * len(r) for r in self.aspect_ratios]

  def __call__(self, image_size: Tuple[int, int], feature_shapes: Sequence[Tuple[int, int]]) -> jax.Array:
    if len(feature_shapes) != len(self.wh_pairs):
      raise UserError(f"DefaultBoxGenerator has {len(self.wh_pairs)} levels but got {len(feature_shapes)} "
                      "feature maps")
    boxes = []
    for k, (gh, gw) in enumerate(feature_shapes):
      if self.steps is not None:
        fx, fy = image_size[1] / self.steps[k], image_size[0] / self.steps[k]
      else:
        fy, fx = gh, gw
      xs = (np.arange(gw) + 0.5).astype(np.float32) / np.float32(fx)
      ys = (np.arange(gh) + 0.5).astype(np.float32) / np.float32(fy)
      cy, cx = np.meshgrid(ys, xs, indexing="ij")
      wh = np.clip(self.wh_pairs[k], 0, 1) if self.clip else self.wh_pairs[k]
      n = len(wh)
      centres = np.repeat(np.stack([cx.reshape(-1), cy.reshape(-1)], -1), n, axis=0)
      boxes.append(np.concatenate([centres, np.tile(wh, (gh * gw, 1))], 1))
    b = np.concatenate(boxes, 0)
    size = np.asarray([image_size[1], image_size[0]], np.float32)
    half = np.float32(0.5) * b[:, 2:]
    return jnp.asarray(np.concatenate([(b[:, :2] - half) * size, (b[:, :2] + half) * size], -1))


def _masked_quality(quality, gt_valid):
  quality = jnp.asarray(quality)
  if gt_valid is None:
    gt_valid = jnp.ones(quality.shape[:1], bool)
  gt_valid = jnp.asarray(gt_valid, bool)
  return jnp.where(gt_valid[:, None], quality, -jnp.inf), gt_valid


class Matcher:
  """torchvision's det_utils.Matcher on padded ground truth: quality [M, N], gt_valid [M] -> matches [N] int32.

  For each prediction, its best valid ground truth (first on ties) if the
  quality is >= high_threshold, BETWEEN_THRESHOLDS (-2) if in [low, high),
  BELOW_LOW_THRESHOLD (-1) below low. allow_low_quality_matches: every
  prediction whose quality with some valid ground truth equals that ground
  truth's best quality (ties included) gets back its best match, even below
  the thresholds (Faster R-CNN's RPN rule).
  """

  BELOW_LOW_THRESHOLD = BELOW_LOW_THRESHOLD
  BETWEEN_THRESHOLDS = BETWEEN_THRESHOLDS

  def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
    if low_threshold > high_threshold:
      raise UserError(f"Matcher: low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
    self.high_threshold = high_threshold
    self.low_threshold = low_threshold
    self.allow_low_quality_matches = allow_low_quality_matches

  def __call__(self, quality, gt_valid=None) -> jax.Array:
    q, gt_valid = _masked_quality(quality, gt_valid)
    vals = jnp.max(q, axis=0)
    best = jnp.argmax(q, axis=0).astype(jnp.int32)
    matches = jnp.where(vals < self.low_threshold, BELOW_LOW_THRESHOLD,
                        jnp.where(vals < self.high_threshold, BETWEEN_THRESHOLDS, best))
    if self.allow_low_quality_matches:
      best_per_gt = jnp.max(q, axis=1, keepdims=True)
      hit = (q == best_per_gt) & gt_valid[:, None]
      matches = jnp.where(jnp.any(hit, axis=0), best, matches)
    return matches.astype(jnp.int32)


class SSDMatcher(Matcher):
  """torchvision's SSDMatcher: Matcher(threshold, threshold), then each valid ground truth takes its best prediction.

  When two ground truths share a best prediction, the higher index wins
  (torch's sequential index_put on CPU).
  """

  def __init__(self, threshold: float):
    super().__init__(threshold, threshold, allow_low_quality_matches=False)

  def __call__(self, quality, gt_valid=None) -> jax.Array:
    matches = super().__call__(quality, gt_valid)
    q, gt_valid = _masked_quality(quality, gt_valid)
    best_pred = jnp.argmax(q, axis=1)
    m = q.shape[0]
    claims = (best_pred[:, None] == jnp.arange(q.shape[1])[None, :]) & gt_valid[:, None]
    claimer = jnp.max(jnp.where(claims, jnp.arange(m)[:, None], -1), axis=0)
    return jnp.where(claimer >= 0, claimer, matches).astype(jnp.int32)
