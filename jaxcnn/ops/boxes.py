"""Box geometry with torchvision.ops names and semantics, in JAX.

Boxes are float arrays [..., 4]; `xyxy` (x1, y1, x2, y2) unless a `fmt` says
otherwise. Pairwise functions take [..., N, 4] and [..., M, 4] and return
[..., N, M]; the `*_loss` functions pair boxes element-wise ([..., 4] with
[..., 4]) as torchvision's. Everything keeps its input shape, so it jits and
vmaps; where torchvision returns a variable-length index list
(`remove_small_boxes`) this module returns a boolean mask of fixed shape.
Arithmetic is float32 (float64 stays float64), written in torchvision's order
so results agree to the last few ulps.
"""
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError, unknown

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
REDUCTIONS = ("none", "mean", "sum")


def _float(x):
  x = jnp.asarray(x)
  return x if x.dtype in (jnp.float32, jnp.float64) else x.astype(jnp.float32)


def _check_fmt(fmt):
  if fmt not in BOX_FORMATS:
    raise unknown("box format", fmt, BOX_FORMATS)


def _to_xyxy(boxes, fmt):
  a, b, c, d = jnp.unstack(boxes, axis=-1)
  if fmt == "xyxy":
    return boxes
  if fmt == "xywh":
    return jnp.stack([a, b, a + c, b + d], axis=-1)
  return jnp.stack([a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d], axis=-1)


def _from_xyxy(boxes, fmt):
  x1, y1, x2, y2 = jnp.unstack(boxes, axis=-1)
  if fmt == "xyxy":
    return boxes
  if fmt == "xywh":
    return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)
  return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_convert(boxes, in_fmt: str, out_fmt: str) -> jax.Array:
  """Converts [..., 4] boxes between 'xyxy', 'xywh' and 'cxcywh' (through xyxy, as torchvision)."""
  _check_fmt(in_fmt)
  _check_fmt(out_fmt)
  boxes = jnp.asarray(boxes)
  if in_fmt == out_fmt:
    return boxes
  return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def box_area(boxes, fmt: str = "xyxy") -> jax.Array:
  """Area of [..., 4] boxes -> [...]; degenerate xyxy boxes give non-positive areas, as torchvision."""
  _check_fmt(fmt)
  boxes = _float(boxes)
  if fmt == "xyxy":
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  return boxes[..., 2] * boxes[..., 3]


def _inter_union(boxes1, boxes2):
  area1 = box_area(boxes1)
  area2 = box_area(boxes2)
  lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[..., :, None] + area2[..., None, :] - inter
  return inter, union


def box_iou(boxes1, boxes2, fmt: str = "xyxy") -> jax.Array:
  """Pairwise IoU [..., N, M]; 0/0 (two empty boxes) is NaN as in torchvision."""
  _check_fmt(fmt)
  boxes1 = _to_xyxy(_float(boxes1), fmt)
  boxes2 = _to_xyxy(_float(boxes2), fmt)
  inter, union = _inter_union(boxes1, boxes2)
  return inter / union


def _enclosing_wh(boxes1, boxes2):
  lti = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rbi = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  return jnp.maximum(rbi - lti, 0.0)


def generalized_box_iou(boxes1, boxes2) -> jax.Array:
  """Pairwise GIoU (Rezatofighi et al. 2019): IoU - (C - U) / C with C the enclosing box area."""
  boxes1, boxes2 = _float(boxes1), _float(boxes2)
  inter, union = _inter_union(boxes1, boxes2)
  iou = inter / union
  whi = _enclosing_wh(boxes1, boxes2)
  areai = whi[..., 0] * whi[..., 1]
  return iou - (areai - union) / areai


def _diou_iou(boxes1, boxes2, eps):
  inter, union = _inter_union(boxes1, boxes2)
  iou = inter / union
  whi = _enclosing_wh(boxes1, boxes2)
  diag2 = whi[..., 0] ** 2 + whi[..., 1] ** 2 + eps
  xp = (boxes1[..., 0] + boxes1[..., 2]) / 2
  yp = (boxes1[..., 1] + boxes1[..., 3]) / 2
  xg = (boxes2[..., 0] + boxes2[..., 2]) / 2
  yg = (boxes2[..., 1] + boxes2[..., 3]) / 2
  center2 = (xp[..., :, None] - xg[..., None, :]) ** 2 + (yp[..., :, None] - yg[..., None, :]) ** 2
  return iou - center2 / diag2, iou


def distance_box_iou(boxes1, boxes2, eps: float = 1e-7) -> jax.Array:
  """Pairwise DIoU (Zheng et al. 2020): IoU - (centre distance)^2 / (enclosing diagonal)^2."""
  diou, _ = _diou_iou(_float(boxes1), _float(boxes2), eps)
  return diou


def _aspect_term(w_a, h_a, w_b, h_b):
  return (4 / math.pi ** 2) * (jnp.arctan(w_a / h_a) - jnp.arctan(w_b / h_b)) ** 2


def complete_box_iou(boxes1, boxes2, eps: float = 1e-7) -> jax.Array:
  """Pairwise CIoU: DIoU - alpha v, with alpha = v / (1 - IoU + v + eps) held constant in the gradient."""
  boxes1, boxes2 = _float(boxes1), _float(boxes2)
  diou, iou = _diou_iou(boxes1, boxes2, eps)
  w1 = (boxes1[..., 2] - boxes1[..., 0])[..., :, None]
  h1 = (boxes1[..., 3] - boxes1[..., 1])[..., :, None]
  w2 = (boxes2[..., 2] - boxes2[..., 0])[..., None, :]
  h2 = (boxes2[..., 3] - boxes2[..., 1])[..., None, :]
  v = _aspect_term(w1, h1, w2, h2)
  alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
  return diou - alpha * v


def _reduce(loss, reduction):
  if reduction == "none":
    return loss
  if reduction == "mean":
    return jnp.mean(loss) if loss.size else jnp.sum(loss) * 0.0
  if reduction == "sum":
    return jnp.sum(loss)
  raise unknown("reduction", reduction, REDUCTIONS)


def _loss_inter_union(boxes1, boxes2):
  x1, y1, x2, y2 = jnp.unstack(boxes1, axis=-1)
  x1g, y1g, x2g, y2g = jnp.unstack(boxes2, axis=-1)
  xk1, yk1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
  xk2, yk2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
  inter = jnp.where((yk2 > yk1) & (xk2 > xk1), (xk2 - xk1) * (yk2 - yk1), 0.0)
  union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
  return inter, union


def _enclosing(boxes1, boxes2):
  x1, y1, x2, y2 = jnp.unstack(boxes1, axis=-1)
  x1g, y1g, x2g, y2g = jnp.unstack(boxes2, axis=-1)
  return jnp.minimum(x1, x1g), jnp.minimum(y1, y1g), jnp.maximum(x2, x2g), jnp.maximum(y2, y2g)


def generalized_box_iou_loss(boxes1, boxes2, reduction: str = "none", eps: float = 1e-7) -> jax.Array:
  """1 - GIoU of paired boxes [..., 4] (torchvision.ops.generalized_box_iou_loss)."""
  boxes1, boxes2 = _float(boxes1), _float(boxes2)
  inter, union = _loss_inter_union(boxes1, boxes2)
  iou = inter / (union + eps)
  xc1, yc1, xc2, yc2 = _enclosing(boxes1, boxes2)
  area_c = (xc2 - xc1) * (yc2 - yc1)
  return _reduce(1 - (iou - (area_c - union) / (area_c + eps)), reduction)


def _diou_loss_iou(boxes1, boxes2, eps):
  inter, union = _loss_inter_union(boxes1, boxes2)
  iou = inter / (union + eps)
  xc1, yc1, xc2, yc2 = _enclosing(boxes1, boxes2)
  diag2 = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
  x1, y1, x2, y2 = jnp.unstack(boxes1, axis=-1)
  x1g, y1g, x2g, y2g = jnp.unstack(boxes2, axis=-1)
  center2 = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
  return 1 - iou + center2 / diag2, iou


def distance_box_iou_loss(boxes1, boxes2, reduction: str = "none", eps: float = 1e-7) -> jax.Array:
  """1 - DIoU of paired boxes [..., 4] (torchvision.ops.distance_box_iou_loss)."""
  loss, _ = _diou_loss_iou(_float(boxes1), _float(boxes2), eps)
  return _reduce(loss, reduction)


def complete_box_iou_loss(boxes1, boxes2, reduction: str = "none", eps: float = 1e-7) -> jax.Array:
  """1 - CIoU of paired boxes [..., 4] (torchvision.ops.complete_box_iou_loss).

  As in torchvision, the DIoU part always uses eps=1e-7 and `eps` enters only alpha.
  """
  boxes1, boxes2 = _float(boxes1), _float(boxes2)
  diou_loss, iou = _diou_loss_iou(boxes1, boxes2, 1e-7)
  w_pred, h_pred = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
  w_gt, h_gt = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
  v = _aspect_term(w_gt, h_gt, w_pred, h_pred)
  alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
  return _reduce(diou_loss + alpha * v, reduction)


def clip_boxes_to_image(boxes, size: Tuple[int, int]) -> jax.Array:
  """Clamps xyxy boxes into [0, width] x [0, height]; `size` is (height, width), static or traced."""
  boxes = jnp.asarray(boxes)
  height, width = size
  x = jnp.clip(boxes[..., 0::2], 0, width)
  y = jnp.clip(boxes[..., 1::2], 0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1).astype(boxes.dtype)


def remove_small_boxes(boxes, min_size: float) -> jax.Array:
  """Keep MASK [...] of boxes whose width and height are both >= min_size.

  torchvision returns `torch.where(mask)[0]`; a mask keeps the shape static.
  """
  boxes = jnp.asarray(boxes)
  ws = boxes[..., 2] - boxes[..., 0]
  hs = boxes[..., 3] - boxes[..., 1]
  return (ws >= min_size) & (hs >= min_size)


class BoxCoder:
  """Faster R-CNN box deltas, as torchvision.models.detection._utils.BoxCoder.

  encode(reference_boxes, proposals): the deltas that move `proposals` (anchors)
  onto `reference_boxes` (matched ground truth), both [..., 4] xyxy:
  (wx dx / w, wy dy / h, ww log(gw / w), wh log(gh / h)).
  decode(rel_codes, boxes): rel_codes [..., 4k] (k boxes per reference, e.g. one per
  class) against boxes [..., 4] -> [..., 4k] xyxy; dw, dh are clamped from above at
  `bbox_xform_clip` (log(1000/16)) before the exp, so no box grows unboundedly.
  """

  def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
               bbox_xform_clip: float = math.log(1000.0 / 16)):
    if len(weights) != 4:
      raise UserError(f"BoxCoder weights must be 4 numbers (wx, wy, ww, wh), got {tuple(weights)}")
    self.weights = tuple(float(w) for w in weights)
    self.bbox_xform_clip = float(bbox_xform_clip)

  def encode(self, reference_boxes, proposals) -> jax.Array:
    reference_boxes = _float(reference_boxes)
    proposals = jnp.asarray(proposals, reference_boxes.dtype)
    wx, wy, ww, wh = self.weights
    ex_w = proposals[..., 2] - proposals[..., 0]
    ex_h = proposals[..., 3] - proposals[..., 1]
    ex_cx = proposals[..., 0] + 0.5 * ex_w
    ex_cy = proposals[..., 1] + 0.5 * ex_h
    gt_w = reference_boxes[..., 2] - reference_boxes[..., 0]
    gt_h = reference_boxes[..., 3] - reference_boxes[..., 1]
    gt_cx = reference_boxes[..., 0] + 0.5 * gt_w
    gt_cy = reference_boxes[..., 1] + 0.5 * gt_h
    return jnp.stack([wx * (gt_cx - ex_cx) / ex_w, wy * (gt_cy - ex_cy) / ex_h,
                      ww * jnp.log(gt_w / ex_w), wh * jnp.log(gt_h / ex_h)], axis=-1)

  def decode(self, rel_codes, boxes) -> jax.Array:
    rel_codes = _float(rel_codes)
    if rel_codes.shape[-1] % 4:
      raise UserError(f"BoxCoder.decode: rel_codes' last axis must be a multiple of 4, got {rel_codes.shape}")
    boxes = jnp.asarray(boxes, rel_codes.dtype)
    codes = rel_codes.reshape(rel_codes.shape[:-1] + (-1, 4))
    widths = (boxes[..., 2] - boxes[..., 0])[..., None]
    heights = (boxes[..., 3] - boxes[..., 1])[..., None]
    ctr_x = boxes[..., 0][..., None] + 0.5 * widths
    ctr_y = boxes[..., 1][..., None] + 0.5 * heights
    wx, wy, ww, wh = self.weights
    dx = codes[..., 0] / wx
    dy = codes[..., 1] / wy
    dw = jnp.minimum(codes[..., 2] / ww, self.bbox_xform_clip)
    dh = jnp.minimum(codes[..., 3] / wh, self.bbox_xform_clip)
    pred_cx = dx * widths + ctr_x
    pred_cy = dy * heights + ctr_y
    half_w = 0.5 * (jnp.exp(dw) * widths)
    half_h = 0.5 * (jnp.exp(dh) * heights)
    out = jnp.stack([pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h], axis=-1)
    return out.reshape(rel_codes.shape)
