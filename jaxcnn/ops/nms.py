"""Non-maximum suppression with fixed shapes: hard (torchvision's), batched, Soft-NMS, Adaptive NMS.

Every function returns `max_output_size` slots: kept indices into the input in
decreasing score order, padded with -1, and `count`, the number of real
entries. `nms` / `batched_nms`: the first `count` indices equal
`torchvision.ops.nms` / `batched_nms` on the same inputs, ties included: boxes are
visited in a stable descending sort of the scores (equal scores by increasing
index), which is what torchvision's nms kernel does on CPU. (torchvision's
`batched_nms` on more than 1000 CPU boxes re-sorts its result with an unstable
sort, so the order among equal scores there is arbitrary; the kept set is the same.)
A box suppresses a later one when their IoU is > the threshold, as torchvision; a
0/0 IoU (two empty boxes) suppresses nothing.

Memory: the boxes, sorted by score, are processed in tiles of `tile_size` (512)
boxes. Tile t is first suppressed by the kept boxes of every earlier tile, one
[tile, tile] IoU block at a time, then resolved within itself by iterating
"kept = alive and not overlapped by an earlier kept box of the tile" to its
fixed point (the unique greedy answer; it settles in as many rounds as the
longest chain of suppressions, usually a handful). Peak working memory is
O(N) for the boxes and flags plus one [tile, tile] block (1 MiB of float32 at
512), never N x N; compute stays O(N^2 / tile^2) block products, and the loop
stops once `max_output_size` boxes are kept. Under `jax.vmap` the loops run
until every batch member is done.

`valid` (optional bool [N]) marks padding: an invalid box is never kept and
suppresses nothing, so padded detections from a fixed-size top-k can go straight in.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import UserError, unknown

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")


def _pairwise_iou(a, b):
  """IoU [A, B] computed as torchvision's nms kernel: inter / (area_a + area_b - inter)."""
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  w = jnp.maximum(jnp.minimum(a[:, None, 2], b[None, :, 2]) - jnp.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
  h = jnp.maximum(jnp.minimum(a[:, None, 3], b[None, :, 3]) - jnp.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
  inter = w * h
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def _greedy_keep(boxes, alive, thresholds, groups, tile, max_out):
  """Greedy NMS over boxes already sorted by score; returns the keep flags [N].

  Box i (kept) suppresses a later box j of the same group when IoU(i, j) > thresholds[i].
  """
  n = boxes.shape[0]
  num_tiles = -(-n // tile)
  pad = num_tiles * tile - n
  boxes = jnp.pad(boxes, ((0, pad), (0, 0))).reshape(num_tiles, tile, 4)
  alive = jnp.pad(alive, (0, pad)).reshape(num_tiles, tile)
  thresholds = jnp.pad(thresholds, (0, pad), constant_values=jnp.inf).reshape(num_tiles, tile)
  groups = jnp.pad(groups, (0, pad), constant_values=-1).reshape(num_tiles, tile)
  later = jnp.triu(jnp.ones((tile, tile), bool), k=1)

  def overlaps(src, dst):
    s_boxes, s_thr, s_grp = src
    d_boxes, d_grp = dst
    return (_pairwise_iou(s_boxes, d_boxes) > s_thr[:, None]) & (s_grp[:, None] == d_grp[None, :])

  def tile_body(state):
    t, keep, count = state
    d_boxes, d_grp = boxes[t], groups[t]

    def by_earlier_tile(s, cand):
      hit = overlaps((boxes[s], thresholds[s], groups[s]), (d_boxes, d_grp)) & keep[s][:, None]
      return cand & ~jnp.any(hit, axis=0)

    cand = lax.fori_loop(0, t, by_earlier_tile, alive[t])
    within = overlaps((d_boxes, thresholds[t], d_grp), (d_boxes, d_grp)) & later

    def settle(c):
      k, _ = c
      new = cand & ~jnp.any(within & k[:, None], axis=0)
      return new, jnp.any(new != k)

    k, _ = lax.while_loop(lambda c: c[1], settle, (cand, jnp.any(cand)))
    return t + 1, keep.at[t].set(k), count + jnp.sum(k, dtype=jnp.int32)

  def not_done(state):
    t, _, count = state
    return (t < num_tiles) & (count < max_out)

  keep = jnp.zeros((num_tiles, tile), bool)
  _, keep, _ = lax.while_loop(not_done, tile_body, (jnp.int32(0), keep, jnp.int32(0)))
  return keep.reshape(-1)[:n]


def _prepare(boxes, scores, valid):
  boxes = jnp.asarray(boxes)
  scores = jnp.asarray(scores)
  if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
    raise UserError(f"nms expects boxes [N, 4] and scores [N] (vmap for batches); got {boxes.shape} and {scores.shape}")
  # half-precision IoUs would flip decisions near the threshold; integers would truncate the division
  boxes = boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32)) if jnp.issubdtype(boxes.dtype, jnp.floating) \
      else boxes.astype(jnp.float32)
  valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
  order = jnp.argsort(-scores, stable=True)
  return boxes, order, valid


def _output(keep, order, max_out):
  n = keep.shape[0]
  pos = jnp.nonzero(keep, size=max_out, fill_value=n)[0]
  safe = jnp.minimum(pos, n - 1)
  indices = jnp.where(pos < n, order[safe], -1).astype(jnp.int32)
  count = jnp.minimum(jnp.sum(keep, dtype=jnp.int32), max_out)
  return indices, count


def _check_sizes(n, max_output_size, tile_size):
  if tile_size < 1:
    raise UserError(f"nms tile_size must be >= 1, got {tile_size}")
  max_out = n if max_output_size is None else int(max_output_size)
  if max_out < 1:
    raise UserError(f"nms max_output_size must be >= 1 (or None for all boxes), got {max_output_size}")
  return max_out, min(tile_size, max(n, 1))


def _run(boxes, scores, groups, thresholds, valid, max_output_size, tile_size):
  boxes, order, valid = _prepare(boxes, scores, valid)
  n = boxes.shape[0]
  max_out, tile = _check_sizes(n, max_output_size, tile_size)
  if n == 0:
    return jnp.full((max_out,), -1, jnp.int32), jnp.int32(0)
  keep = _greedy_keep(boxes[order], valid[order], thresholds[order], groups[order], tile, max_out)
  return _output(keep, order, max_out)


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def nms(boxes, scores, iou_threshold, max_output_size: Optional[int] = None, valid=None, tile_size: int = 512):
  """Hard NMS of xyxy boxes [N, 4] -> (indices [max_output_size] padded with -1, count).

  max_output_size=None keeps room for every box. The first `count` indices equal
  torchvision.ops.nms(boxes, scores, iou_threshold)[:max_output_size].
  """
  scores = jnp.asarray(scores)
  thresholds = jnp.broadcast_to(jnp.asarray(iou_threshold, jnp.float32), scores.shape)
  return _run(boxes, scores, jnp.zeros(scores.shape, jnp.int32), thresholds, valid, max_output_size, tile_size)


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def batched_nms(boxes, scores, idxs, iou_threshold, max_output_size: Optional[int] = None, valid=None,
                tile_size: int = 512):
  """NMS within each category `idxs` [N] (int): boxes of different categories never suppress each other.

  Same outputs as `nms`. torchvision shifts each category's boxes apart by a
  coordinate offset; here the IoU test is masked by category instead, so no
  precision is lost to the offsets.
  """
  scores = jnp.asarray(scores)
  thresholds = jnp.broadcast_to(jnp.asarray(iou_threshold, jnp.float32), scores.shape)
  return _run(boxes, scores, jnp.asarray(idxs).astype(jnp.int32), thresholds, valid, max_output_size, tile_size)


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def adaptive_nms(boxes, scores, densities, iou_threshold, max_output_size: Optional[int] = None, idxs=None,
                 valid=None, tile_size: int = 512):
  """Adaptive NMS (Liu et al. 2019, "Adaptive NMS: Refining Pedestrian Detection in a Crowd").

  Greedy NMS where each kept box M suppresses with its own threshold
  N_M = max(iou_threshold, d_M), d_M its predicted density [N] (the IoU with
  its most-overlapping ground-truth neighbour), so crowded objects keep their
  neighbours and isolated ones are cleaned as usual. A box is suppressed when
  IoU > N_M, the comparison `nms` uses, so densities <= iou_threshold give
  exactly `nms`. Optional `idxs` restricts suppression to a category as in
  `batched_nms`. Returns (indices, count) like `nms`.
  """
  scores = jnp.asarray(scores)
  thresholds = jnp.maximum(jnp.asarray(iou_threshold, jnp.float32), jnp.asarray(densities, jnp.float32))
  thresholds = jnp.broadcast_to(thresholds, scores.shape)
  groups = jnp.zeros(scores.shape, jnp.int32) if idxs is None else jnp.asarray(idxs).astype(jnp.int32)
  return _run(boxes, scores, groups, thresholds, valid, max_output_size, tile_size)


@functools.partial(jax.jit, static_argnames=("method", "max_output_size"))
def soft_nms(boxes, scores, method: str = "linear", sigma: float = 0.5, iou_threshold: float = 0.3,
             score_threshold: float = 0.001, max_output_size: Optional[int] = None, idxs=None, valid=None):
  """Soft-NMS (Bodla et al. 2017) -> (indices [max_output_size] padded -1, decayed scores padded 0, count).

  The authors' loop (cpu_soft_nms): repeatedly take the remaining box M with the
  highest current score, output it with that score, and decay every other
  remaining box b by w(IoU(M, b)):
    linear:   w = 1 - IoU if IoU > iou_threshold else 1
    gaussian: w = exp(-IoU^2 / sigma)
    hard:     w = 0 if IoU > iou_threshold else 1   (classic NMS)
  then drop boxes whose score fell below `score_threshold`. Differences from
  the reference code, both deliberate: IoU is the continuous one of
  torchvision (the reference adds 1 pixel to widths and heights), and the
  score threshold applies to every remaining box (the reference tests only
  boxes overlapping M, so a box that starts below the threshold can survive
  there). Equal current scores go to the lower index. Optional `idxs` keeps the
  decay within a category; `valid` marks padding as in `nms`. Cost:
  `max_output_size` sequential rounds of O(N).
  """
  if method not in SOFT_NMS_METHODS:
    raise unknown("soft_nms method", method, SOFT_NMS_METHODS)
  boxes = jnp.asarray(boxes)
  scores = jnp.asarray(scores, jnp.float32)
  if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
    raise UserError(f"soft_nms expects boxes [N, 4] and scores [N]; got {boxes.shape} and {scores.shape}")
  boxes = boxes.astype(jnp.float32)
  n = boxes.shape[0]
  max_out, _ = _check_sizes(n, max_output_size, 1)
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  groups = jnp.zeros((n,), jnp.int32) if idxs is None else jnp.asarray(idxs).astype(jnp.int32)
  alive = valid & (scores >= score_threshold)

  def step(state):
    k, s, alive, out_idx, out_score = state
    i = jnp.argmax(jnp.where(alive, s, -jnp.inf))
    out_idx = out_idx.at[k].set(i.astype(jnp.int32))
    out_score = out_score.at[k].set(s[i])
    alive = alive.at[i].set(False)
    iou = _pairwise_iou(boxes[i][None], boxes)[0]
    if method == "linear":
      w = jnp.where(iou > iou_threshold, 1.0 - iou, 1.0)
    elif method == "gaussian":
      w = jnp.exp(-(iou * iou) / sigma)
    else:
      w = jnp.where(iou > iou_threshold, 0.0, 1.0)
    w = jnp.where(groups == groups[i], w, 1.0)
    s = jnp.where(alive, s * w, s)
    return k + 1, s, alive & (s >= score_threshold), out_idx, out_score

  def more(state):
    k, _, alive, _, _ = state
    return (k < max_out) & jnp.any(alive)

  state = (jnp.int32(0), scores, alive, jnp.full((max_out,), -1, jnp.int32), jnp.zeros((max_out,), jnp.float32))
  count, _, _, out_idx, out_score = lax.while_loop(more, step, state)
  return out_idx, out_score, count
