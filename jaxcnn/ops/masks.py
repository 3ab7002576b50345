"""Mask R-CNN's mask operations with fixed shapes: targets, loss, inference and pasting into the image.

torchvision's semantics (torchvision.models.detection.roi_heads), written for padded batches:
  project_masks_on_boxes  each proposal's matched ground-truth mask cropped and resized to S x S by
                          roi_align (spatial scale 1, adaptive sampling, aligned=False): the targets
  maskrcnn_loss           BCE-with-logits on the matched class's channel of the positive proposals,
                          the mean over every positive proposal of the batch and its S x S cells;
                          0 without positives (torchvision returns mask_logits.sum() * 0)
  maskrcnn_inference      sigmoid of the predicted label's channel
  paste_masks_in_image    each S x S probability map pasted into the full image: padded by one cell
                          (expand_masks), its box scaled by (S + 2) / S and truncated to integers
                          (expand_boxes), then bilinearly resized (align_corners=False) onto the
                          box's pixels, zero elsewhere; [D, H, W] for D detections
Mask logits are NHWC per RoI: [..., S, S, num_classes].

The resizing is separable: roi_align and the bilinear paste are a row-weight matrix times the mask
times a column-weight matrix, computed per RoI (`roi_batch` chunks the RoIs through lax.map to bound
the working memory, RoI x S x W floats).
"""
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import UserError
from jaxcnn.ops.roi import _align_weights

_HIGHEST = lax.Precision.HIGHEST


def _chunks(fn, args, roi_batch: Optional[int]):
  if roi_batch is None:
    return jax.vmap(fn)(*args)
  return lax.map(lambda a: fn(*a), args, batch_size=roi_batch)


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, output_size: int = 28,
                           max_sampling_ratio: Optional[int] = None, roi_batch: Optional[int] = None) -> jax.Array:
  """Mask targets [K, S, S] float32: gt_masks [M, H, W] (any dtype, 0/1) under boxes [K, 4] xyxy pixels.

  Row k is roi_align(gt_masks[matched_idxs[k]], boxes[k], (S, S), 1.0, sampling_ratio=-1), as
  torchvision's project_masks_on_boxes. The adaptive sampling grid ceil(box side / S) is bounded
  statically by `max_sampling_ratio`, by default ceil(max(H, W) / S): exact for boxes that lie within
  the image (proposals are clipped to it, ground-truth boxes are in it).
  """
  gt_masks = jnp.asarray(gt_masks)
  boxes = jnp.asarray(boxes, jnp.float32)
  if gt_masks.ndim != 3 or boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise UserError(f"project_masks_on_boxes needs gt_masks [M, H, W] and boxes [K, 4]; got {gt_masks.shape} "
                    f"and {boxes.shape}")
  if gt_masks.shape[0] == 0:
    return jnp.zeros((boxes.shape[0], output_size, output_size), jnp.float32)
  _, height, width = gt_masks.shape
  grid = max_sampling_ratio or max(1, math.ceil(max(height, width) / output_size))
  masks = gt_masks.astype(jnp.float32)
  idx = jnp.clip(jnp.asarray(matched_idxs, jnp.int32), 0, gt_masks.shape[0] - 1)

  def one(box, i):
    ay, ax = _align_weights(box[None], height, width, (output_size, output_size), 1.0, -1, int(grid), False)
    rows = jnp.matmul(ay[0], masks[i], precision=_HIGHEST)
    return jnp.matmul(rows, ax[0].T, precision=_HIGHEST)
  return _chunks(one, (boxes, idx), roi_batch)


def binary_cross_entropy_with_logits(logits, targets) -> jax.Array:
  """Elementwise BCE-with-logits, max(x, 0) - x t + log(1 + exp(-|x|)) (stable for any x)."""
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, matched_idxs, positive,
                  axis_name: Optional[str] = None, max_sampling_ratio: Optional[int] = None,
                  roi_batch: Optional[int] = None) -> jax.Array:
  """torchvision's maskrcnn_loss on a padded batch -> scalar.

  mask_logits [B, P, S, S, C] for P proposal slots per image, proposals [B, P, 4] xyxy, gt_masks
  [B, M, H, W], gt_labels int [B, M], matched_idxs int [B, P] (index of each proposal's ground truth),
  positive bool [B, P] (the slots torchvision keeps: sampled proposals with label > 0). The mean of
  the BCE over the positive slots' S x S cells of their matched label's channel, across the batch
  (with `axis_name`, across the devices too: numerator and count are psum-ed); 0 without positives.
  """
  mask_logits = jnp.asarray(mask_logits, jnp.float32)
  if mask_logits.ndim != 5:
    raise UserError(f"maskrcnn_loss needs mask_logits [B, P, S, S, num_classes]; got {mask_logits.shape}")
  size = mask_logits.shape[2]
  positive = jnp.asarray(positive, bool)
  matched_idxs = jnp.asarray(matched_idxs, jnp.int32)
  gt_labels = jnp.asarray(gt_labels, jnp.int32)
  targets = jax.vmap(lambda m, p, i: project_masks_on_boxes(m, p, i, size, max_sampling_ratio, roi_batch))(
      gt_masks, proposals, matched_idxs)
  if gt_labels.shape[1] == 0:
    labels = jnp.zeros(matched_idxs.shape, jnp.int32)
  else:
    labels = jnp.take_along_axis(gt_labels, jnp.clip(matched_idxs, 0, gt_labels.shape[1] - 1), axis=1)
  labels = jnp.clip(labels, 0, mask_logits.shape[-1] - 1)
  logits = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
  bce = jnp.sum(binary_cross_entropy_with_logits(logits, targets), axis=(2, 3))
  total = jnp.sum(jnp.where(positive, bce, 0.0))
  count = jnp.sum(positive).astype(jnp.float32) * (size * size)
  if axis_name is not None:
    total, count = lax.psum((total, count), axis_name)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def maskrcnn_inference(mask_logits, labels) -> jax.Array:
  """Probabilities [..., S, S] of each RoI's predicted class: mask_logits [..., S, S, C], labels int [...]."""
  mask_logits = jnp.asarray(mask_logits)
  labels = jnp.clip(jnp.asarray(labels, jnp.int32), 0, mask_logits.shape[-1] - 1)
  picked = jnp.take_along_axis(mask_logits, labels[..., None, None, None], axis=-1)[..., 0]
  return jax.nn.sigmoid(picked.astype(jnp.float32))


def expand_boxes(boxes, scale: float) -> jax.Array:
  """Boxes [..., 4] xyxy scaled by `scale` about their centres (float32, torchvision's expand_boxes)."""
  boxes = jnp.asarray(boxes, jnp.float32)
  scale = jnp.float32(scale)
  w_half = (boxes[..., 2] - boxes[..., 0]) * 0.5 * scale
  h_half = (boxes[..., 3] - boxes[..., 1]) * 0.5 * scale
  x_c = (boxes[..., 2] + boxes[..., 0]) * 0.5
  y_c = (boxes[..., 3] + boxes[..., 1]) * 0.5
  return jnp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=-1)


def _paste_axis(lo, hi, in_size: int, length: int):
  """Weights [length, in_size] resizing `in_size` cells onto image pixels lo..hi (integers), 0 outside.

  PyTorch's bilinear interpolation (align_corners=False) to hi - lo + 1 (at least 1) outputs:
  source index max(0, (i + 0.5) * in / out - 0.5), its floor clamped to in - 1, the next cell
  unless at the end.
  """
  out = jnp.maximum(hi - lo + 1, 1)
  pos = jnp.arange(length, dtype=jnp.int32)
  local = pos - lo
  ratio = jnp.float32(in_size) / out.astype(jnp.float32)
  src = jnp.maximum(ratio * (local.astype(jnp.float32) + 0.5) - 0.5, 0.0)
  src = jnp.where(out == in_size, local.astype(jnp.float32), src)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  i1 = jnp.where(i0 < in_size - 1, i0 + 1, i0)
  w = ((1.0 - lam)[:, None] * jax.nn.one_hot(i0, in_size, dtype=jnp.float32)
       + lam[:, None] * jax.nn.one_hot(i1, in_size, dtype=jnp.float32))
  inside = (pos >= lo) & (pos <= hi)
  return jnp.where(inside[:, None], w, 0.0)


def paste_masks_in_image(masks, boxes, image_size: Tuple[int, int], padding: int = 1,
                         roi_batch: Optional[int] = None) -> jax.Array:
  """torchvision's paste_masks_in_image: masks [D, S, S] (probabilities) at boxes [D, 4] -> [D, H, W].

  Each mask is zero-padded by `padding` cells, its box scaled by (S + 2 padding) / S about the centre
  and truncated to integer pixels x0..x1, y0..y1 (inclusive), and the padded mask is resized
  bilinearly to (y1 - y0 + 1) x (x1 - x0 + 1) and placed there, cut at the image border. Equal to
  torchvision's for boxes that reach into the image, as detections do (a box wholly above or left of the
  image gives zeros here, where torchvision's slicing would wrap around).
  """
  masks = jnp.asarray(masks, jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or boxes.shape != masks.shape[:1] + (4,):
    raise UserError(f"paste_masks_in_image needs masks [D, S, S] and boxes [D, 4]; got {masks.shape} and "
                    f"{boxes.shape}")
  height, width = (int(s) for s in image_size)
  size = masks.shape[-1]
  padded = jnp.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
  corners = jnp.trunc(expand_boxes(boxes, (size + 2 * padding) / size)).astype(jnp.int32)
  in_size = size + 2 * padding

  def one(mask, box):
    wy = _paste_axis(box[1], box[3], in_size, height)
    wx = _paste_axis(box[0], box[2], in_size, width)
    cols = jnp.matmul(mask, wx.T, precision=_HIGHEST)
    return jnp.matmul(wy, cols, precision=_HIGHEST)
  return _chunks(one, (padded, corners), roi_batch)
