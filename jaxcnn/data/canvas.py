"""Canvases of scikit-learn digits: the offline dense-prediction datasets `digits_seg`, `digits_det`, `digits_inst`.

`digit_canvases` places several digits at random sizes and positions on a
black canvas and returns, besides the image, a per-pixel class map and each
placed digit's tight box and class (and, when asked, each digit's own ink
mask); the three datasets are built from the same canvases.

How a canvas is made (all draws from the one `np.random.Generator` passed in,
in this order, so a seed fixes everything):
  1. the number of digits k ~ U{digits_per_canvas[0] .. digits_per_canvas[1]};
  2. for each of the k digits: a source digit (uniform over the given images),
     a side s ~ U{digit_size[0] .. digit_size[1]} pixels, then up to
     `max_attempts` top-left corners, each uniform over the positions where the
     s x s square fits, until the square overlaps no square placed before on
     this canvas (digits never overlap; after `max_attempts` failures the digit
     is left out, so a canvas can hold fewer than k);
  3. the 8x8 digit (uint8 0..255) is resized to s x s (bilinear, PIL) and
     pasted; its ink is where the resized digit is >= INK_THRESHOLD (128, half
     of full ink): those pixels get class label + 1 in the mask, every other
     pixel 0 (background; faint edge pixels below the threshold are background
     although visible). The tight box is the bounding box of the ink, in pixel
     edges (x1, y1, x2, y2), x2 and y2 exclusive; the digit's instance mask is
     its ink alone (1 on those pixels, 0 elsewhere on the canvas), so it lies
     inside the tight box and touches all four of its edges. A resized digit
     without ink is left out.

`digits_seg` (embedded; 11 classes: 0 background, c + 1 for digit c; ignore
label 255, which no pixel has): 64 x 64 x 1 canvases with 2-4 digits of side
12-28 pixels, 2,000 'train' canvases drawn only from the digits 'train' split
and 500 'test' canvases only from its 'test' split (see `sources`: 1,437 /
360 digits), with the generators np.random.default_rng([5, 0]) (train) and
np.random.default_rng([5, 1]) (test), owned by this module alone. Examples are
{'image': uint8 [64, 64, 1], 'segmentation': uint8 [64, 64]}; the splits are
generated on first use and kept in memory.

`digits_det` (embedded; 10 classes, the digits) is the same canvases with
their boxes instead of the mask: {'image': uint8 [64, 64, 1], 'boxes': float32
[4, 4] tight ink boxes xyxy in pixels, 'boxes_valid': bool [4], 'box_classes':
int32 [4] digit labels}, slots past a canvas's digits zero and invalid (a canvas
has at most 4 digits, so data.max_boxes defaults to 4 here). Geometric
augmentation moves the boxes, clips them to the crop and clears 'boxes_valid'
of boxes it leaves without area (see `geometry`); 'box_classes' keeps its
slots. Batches also carry 'source_hw' (64, 64) like every dataset with boxes.

`digits_inst` (embedded; 10 classes; instance segmentation, Mask R-CNN) is
digits_det with one instance mask per box: {'image', 'boxes', 'boxes_valid',
'box_classes' as digits_det, 'box_masks': uint8 [4, 64, 64]} where
box_masks[m] is 1 on the ink of the digit in slot m and 0 elsewhere (all 0 in
slots past a canvas's digits), a field of kind 'box_mask'. Digits never
overlap, so a canvas's masks are disjoint and their union is the ink of
digits_seg's mask (segmentation == class + 1 exactly on the slot's mask
inside its box). Batches carry 'box_masks' uint8 [b, 4, H, W] at the output
size, moved with the image by every geometric augmentation (see `geometry`).
The canvases are generated again with their masks (the same draws, so the
same canvases as digits_seg and digits_det), on first use of digits_inst.
"""
import functools
from typing import Dict, Tuple

import numpy as np

from jaxcnn.data import sources, transforms

INK_THRESHOLD = 128
CANVAS_SIZE = 64
DIGITS_PER_CANVAS = (2, 4)
DIGIT_SIZE = (12, 28)
SPLIT_SIZES = {"train": 2000, "test": 500}
SPLIT_SEEDS = {"train": (5, 0), "test": (5, 1)}
CLASS_NAMES = ("background",) + tuple(str(d) for d in range(10))


def digit_canvases(images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator,
                   canvas_size: int = CANVAS_SIZE, digits_per_canvas: Tuple[int, int] = DIGITS_PER_CANVAS,
                   digit_size: Tuple[int, int] = DIGIT_SIZE, max_attempts: int = 20,
                   instance_masks: bool = False) -> Dict[str, np.ndarray]:
  """`count` canvases of digits drawn from `images` (uint8 [N, h, w, 1]) with `labels` [N] (see the module doc).

  Returns {'image': uint8 [count, S, S, 1], 'segmentation': uint8 [count, S, S] (label + 1 on ink, 0
  elsewhere), 'boxes': float32 [count, M, 4] tight ink boxes xyxy in pixel edges, 'classes': int32 [count, M]
  digit labels, 'valid': bool [count, M]}, M = digits_per_canvas[1], slots past a canvas's digits zero and
  invalid, digits in the order they were placed. With `instance_masks`, also 'instance_masks': uint8
  [count, M, S, S], 1 on the ink of the slot's digit (all 0 in empty slots); the draws, and so every other
  array, are the same either way.
  """
  lo, hi = digits_per_canvas
  if not 1 <= lo <= hi or not 1 <= digit_size[0] <= digit_size[1] <= canvas_size:
    raise ValueError(f"want 1 <= digits {digits_per_canvas} and 1 <= digit sizes {digit_size} <= {canvas_size}")
  out_images = np.zeros((count, canvas_size, canvas_size, 1), np.uint8)
  masks = np.zeros((count, canvas_size, canvas_size), np.uint8)
  boxes = np.zeros((count, hi, 4), np.float32)
  classes = np.zeros((count, hi), np.int32)
  valid = np.zeros((count, hi), bool)
  instances = np.zeros((count, hi, canvas_size, canvas_size), np.uint8) if instance_masks else None
  resized = {}
  for n in range(count):
    placed = []    # (top, left, side) squares on this canvas
    for _ in range(int(rng.integers(lo, hi + 1))):
      index = int(rng.integers(len(images)))
      side = int(rng.integers(digit_size[0], digit_size[1] + 1))
      spot = None
      for _ in range(max_attempts):
        top, left = (int(v) for v in rng.integers(0, canvas_size - side + 1, size=2))
        if all(top >= t + s or t >= top + side or left >= l + s or l >= left + side for t, l, s in placed):
          spot = top, left
          break
      if spot is None:
        continue
      key = (index, side)
      if key not in resized:
        resized[key] = transforms.resize(images[index], side)[..., 0]
      digit = resized[key]
      ink = digit >= INK_THRESHOLD
      if not ink.any():
        continue
      top, left = spot
      slot = len(placed)
      placed.append((top, left, side))
      out_images[n, top:top + side, left:left + side, 0] = digit
      masks[n, top:top + side, left:left + side][ink] = labels[index] + 1
      if instances is not None:
        instances[n, slot, top:top + side, left:left + side] = ink
      rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
      boxes[n, slot] = (left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1)
      classes[n, slot] = labels[index]
      valid[n, slot] = True
  out = {"image": out_images, "segmentation": masks, "boxes": boxes, "classes": classes, "valid": valid}
  if instances is not None:
    out["instance_masks"] = instances
  return out


@functools.lru_cache(maxsize=2)
def digits_canvas_splits(instance_masks: bool = False) -> Dict[str, Dict[str, np.ndarray]]:
  """{'train': canvases, 'test': canvases} as `digit_canvases` returns them, for the module doc's recipe."""
  digits = sources.digits_arrays()
  splits = {}
  for split, size in SPLIT_SIZES.items():
    images, labels = digits[split]
    arrays = digit_canvases(images, labels, size, np.random.default_rng(SPLIT_SEEDS[split]),
                            instance_masks=instance_masks)
    for array in arrays.values():
      array.setflags(write=False)   # shared by every source of this process
    splits[split] = arrays
  return splits


def _digits_seg_arrays() -> Dict[str, Dict[str, np.ndarray]]:
  return {split: {"image": a["image"], "segmentation": a["segmentation"]}
          for split, a in digits_canvas_splits().items()}


def _digits_det_arrays() -> Dict[str, Dict[str, np.ndarray]]:
  return {split: {"image": a["image"], "boxes": a["boxes"], "boxes_valid": a["valid"], "box_classes": a["classes"]}
          for split, a in digits_canvas_splits().items()}


SEG_INFO = sources.DatasetInfo("digits_seg", 11, (CANVAS_SIZE, CANVAS_SIZE, 1), True, "train", "test", None,
                               fields={"image": "image", "segmentation": "mask"}, class_names=CLASS_NAMES)
sources.register_embedded(SEG_INFO, _digits_seg_arrays)
DET_INFO = sources.DatasetInfo("digits_det", 10, (CANVAS_SIZE, CANVAS_SIZE, 1), True, "train", "test", None,
                               fields={"image": "image", "boxes": "boxes", "box_classes": "box_class"},
                               class_names=CLASS_NAMES[1:], max_boxes=DIGITS_PER_CANVAS[1])
sources.register_embedded(DET_INFO, _digits_det_arrays)


def _digits_inst_arrays() -> Dict[str, Dict[str, np.ndarray]]:
  return {split: {"image": a["image"], "boxes": a["boxes"], "boxes_valid": a["valid"], "box_classes": a["classes"],
                  "box_masks": a["instance_masks"]}
          for split, a in digits_canvas_splits(instance_masks=True).items()}


INST_INFO = sources.DatasetInfo("digits_inst", 10, (CANVAS_SIZE, CANVAS_SIZE, 1), True, "train", "test", None,
                                fields={"image": "image", "boxes": "boxes", "box_classes": "box_class",
                                        "box_masks": "box_mask"},
                                class_names=CLASS_NAMES[1:], max_boxes=DIGITS_PER_CANVAS[1])
sources.register_embedded(INST_INFO, _digits_inst_arrays)
