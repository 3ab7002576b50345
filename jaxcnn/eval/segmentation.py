"""Semantic segmentation evaluation: a confusion matrix on device, the metrics on the host, overlay pictures.

The eval step computes `confusion_matrix(labels, preds, K)` per batch (fixed
shapes, jit-able); the task sums those over the split (and across processes)
and `metrics_from_confusion` turns the total into:

  miou                 mean IoU over the classes present (see below)
  iou/<class>          IoU of each present class
  pixel_accuracy       correctly labelled pixels / labelled pixels
  mean_class_accuracy  mean over classes with labelled pixels of their recall (torchvision's "mean acc")
  foreground_iou, foreground_dice   only for two classes (a sigmoid head thresholded at 0.5): class 1's

IoU of class c = TP / (TP + FP + FN) from the summed matrix (one IoU over the
whole split, not a mean over images: the PASCAL VOC convention). A class is
present when it occurs in the labels or in the predictions; the mean is over
those classes, so a class predicted but never labelled counts with IoU 0 and a
class neither labelled nor predicted is left out (its IoU is 0/0). This is
scikit-learn's `jaccard_score(labels, preds, average='macro', labels=present)`;
torchvision's segmentation reference takes the mean over every class, which is
the same number when every class occurs (as over VOC's val split) and NaN
otherwise.
"""
import os
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, preds, num_classes: int, ignore_label: int = 255, weights=None,
                     dtype=jnp.int32) -> jax.Array:
  """[K, K] counts, rows the true class and columns the predicted one, of the pixels that count.

  labels, preds: integer arrays of the same shape (e.g. [B, H, W]). A pixel does
  not count if its label is `ignore_label` or outside [0, K), its prediction is
  outside [0, K), or its weight is 0. `weights` broadcasts against `labels`
  from the left ([B] per example, as the eval pipeline's padding mask, or
  [B, H, W] per pixel). With an integer `dtype` (int32 by default: exact, as
  float32 counts are not beyond 2^24 pixels) weights only select pixels; with a
  float dtype the counts are weighted sums. Computed with one segment sum over
  the K*K cells, not a [pixels, K, K] one-hot.
  """
  labels = jnp.asarray(labels)
  preds = jnp.asarray(preds)
  if labels.shape != preds.shape:
    raise ValueError(f"confusion_matrix: labels {labels.shape} and preds {preds.shape} differ in shape")
  k = int(num_classes)
  labels = labels.astype(jnp.int32)
  preds = preds.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
  counts = jnp.ones(labels.shape, dtype)
  if weights is not None:
    weights = jnp.asarray(weights)
    weights = jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (labels.ndim - weights.ndim)), labels.shape)
    valid = valid & (weights != 0)
    if jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
      counts = weights.astype(dtype)
  cell = jnp.where(valid, labels * k + preds, k * k)  # invalid pixels go to an extra cell that is dropped
  sums = jax.ops.segment_sum(jnp.where(valid, counts, 0).reshape(-1), cell.reshape(-1), num_segments=k * k + 1)
  return sums[:k * k].reshape(k, k)


def per_class_iou(cm) -> np.ndarray:
  """[K] IoU per class from a confusion matrix; NaN for a class neither labelled nor predicted."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def metrics_from_confusion(cm, class_names: Optional[Sequence[str]] = None) -> dict:
  """Host-side metrics (floats) from a summed [K, K] confusion matrix; see the module docstring.

  Per-class keys are `iou/<name>` (class_names, or the class index) for present
  classes only. A matrix with no counted pixel gives NaN for every metric.
  """
  cm = np.asarray(cm, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"metrics_from_confusion: expected a [K, K] matrix, got shape {cm.shape}")
  k = cm.shape[0]
  names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"metrics_from_confusion: {len(names)} class names for {k} classes")
  tp, labelled, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
  iou = per_class_iou(cm)
  present = (labelled + predicted) > 0
  total = cm.sum()
  nan = float("nan")
  out = {
      "miou": float(iou[present].mean()) if present.any() else nan,
      "pixel_accuracy": float(tp.sum() / total) if total > 0 else nan,
      "mean_class_accuracy": float((tp[labelled > 0] / labelled[labelled > 0]).mean()) if total > 0 else nan,
  }
  if k == 2:
    fg_tp, fg_fp, fg_fn = tp[1], predicted[1] - tp[1], labelled[1] - tp[1]
    denominator = 2 * fg_tp + fg_fp + fg_fn
    out["foreground_iou"] = float(fg_tp / (fg_tp + fg_fp + fg_fn)) if denominator > 0 else nan
    out["foreground_dice"] = float(2 * fg_tp / denominator) if denominator > 0 else nan
  for i in np.flatnonzero(present):
    out[f"iou/{names[i]}"] = float(iou[i])
  return out


# --- pictures ------------------------------------------------------------------------------------

IGNORE_COLOR = (224, 224, 192)  # VOC's colour for its 255 (boundary / ignore) label


def palette(n: int = 256) -> np.ndarray:
  """[n, 3] uint8 colours of PASCAL VOC's label palette (class i's colour from the bits of i).

  Entries 0-20 are VOC's 21 classes (0 background black, 1 aeroplane (128, 0, 0), ...);
  later entries continue the same rule.
  """
  colors = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for bit in range(8):
      r |= ((c >> 0) & 1) << (7 - bit)
      g |= ((c >> 1) & 1) << (7 - bit)
      b |= ((c >> 2) & 1) << (7 - bit)
      c >>= 3
    colors[i] = (r, g, b)
  return colors


def _images_uint8(images, value_range: Optional[Tuple[float, float]]) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.dtype == np.uint8:
    return images
  x = images.astype(np.float32)
  if value_range is None:  # each image stretched to its own min..max (normalised inputs have no fixed range)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
  else:
    lo, hi = value_range
  x = (x - lo) / np.maximum(hi - lo, 1e-12)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay(images, masks, num_classes: int, alpha: float = 0.5, background: Optional[int] = 0,
            value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
  """[N, H, W, 3] uint8: images with each pixel's class colour (VOC palette) blended in at `alpha`.

  images [N, H, W, C] (C = 1 or 3; uint8, or float mapped from `value_range`, by default each
  image's own min..max); masks [N, H, W] int class ids. Pixels of class `background` are left
  as they are (None: painted like any class); values outside [0, num_classes) (the ignore
  label) are painted VOC's ignore colour.
  """
  rgb = _images_uint8(images, value_range).astype(np.float32)
  masks = np.asarray(masks)
  if masks.ndim == 4 and masks.shape[-1] == 1:
    masks = masks[..., 0]
  if masks.shape != rgb.shape[:3]:
    raise ValueError(f"overlay: masks {masks.shape} do not match images {rgb.shape[:3]}")
  masks = masks.astype(np.int64)
  inside = (masks >= 0) & (masks < num_classes)
  colors = np.where(inside[..., None], palette(256)[np.clip(masks, 0, 255)],
                    np.asarray(IGNORE_COLOR, np.uint8)).astype(np.float32)
  paint = np.ones(masks.shape, bool) if background is None else masks != background
  out = np.where(paint[..., None], (1.0 - alpha) * rgb + alpha * colors, rgb)
  return np.round(out).astype(np.uint8)


def save_overlay_grid(path: str, images, pred_masks, true_masks=None, num_classes: Optional[int] = None,
                      alpha: float = 0.5, value_range: Optional[Tuple[float, float]] = None,
                      min_cell: int = 96) -> str:
  """Writes a PNG: a row of images with predicted masks overlaid, and below it the ground truth if given.

  `num_classes` None treats every value but 255 as a class. Small images are
  enlarged (nearest) to at least `min_cell` pixels for viewing. Returns `path`.
  """
  from PIL import Image

  from jaxcnn.eval.grids import grid
  k = 255 if num_classes is None else int(num_classes)
  rows = [overlay(images, pred_masks, k, alpha, value_range=value_range)]
  if true_masks is not None:
    rows.append(overlay(images, true_masks, k, alpha, value_range=value_range))
  n = rows[0].shape[0]
  scale = max(1, -(-min_cell // rows[0].shape[1]))
  picture = grid(np.concatenate(rows, axis=0), ncol=n, scale=scale)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(picture).save(path)
  return path
