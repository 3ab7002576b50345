"""Boxes entering the pipeline: tfds detection examples converted, every box checked, padded to data.max_boxes.

tfds object-detection datasets (voc, coco) give each example's objects as a
sequence: 'bbox' float32 [N, 4] normalised (ymin, xmin, ymax, xmax) in [0, 1]
of the image, a 'label' int [N] and per-object flags. `tfds_objects` turns
them into our fields: 'boxes' float32 [N, 4] (x1, y1, x2, y2) in pixels of
the image as read (x = xmin * W, y = ymin * H, pixel edges, so a box covering
the whole W x H image is (0, 0, W, H)), 'box_classes' int32 [N] (the tfds
label: classes 0..K-1) and the flags as bool [N].

`enter_boxes` is where a box enters the pipeline (`pipeline._Examples.read`),
the same for every dataset, with torchvision's detection references as the
model for each choice:
  * boxes outside the image are clipped to it (torchvision's COCO loader
    clamps x to [0, W] and y to [0, H]);
  * a box without area after clipping (x2 <= x1 or y2 <= y1) is dropped, as
    the references' COCO loader drops it, with a warning that counts the
    dropped boxes (the first, the second, the fourth, ... are logged with the
    example they came from); its per-box values go with it;
  * a class outside 0..num_classes-1, coordinates that are not finite,
    per-box fields whose lengths differ, or box masks that are not one
    0/1 mask of the image's size per box ([N, H, W]) are a UserError naming
    the example;
  * an example with no boxes is valid: every slot is padding (background);
  * more boxes than data.max_boxes is a UserError naming the example and
    data.max_boxes (never a silent truncation).
The result has fixed shapes: boxes [M, 4] float32 with the kept boxes first
in their source order, '<boxes>_valid' bool [M], each per-box field [M]
(box_class int32, box_flag bool) or [M, H, W] (box_mask uint8 0/1, H x W the
image's size), padding slots zero / False, M = max_boxes.
"""
import logging
import threading
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from jaxcnn.data import geometry
from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")

PER_BOX_DTYPES = {"box_class": np.int32, "box_flag": np.bool_, "box_mask": np.uint8}


def tfds_objects(example: dict, what: str, flags: Mapping[str, str] = ()) -> Dict[str, np.ndarray]:
  """{'image', 'boxes', 'box_classes', flag fields} of a tfds detection example (see the module doc).

  `flags` maps our field names to tfds object keys, e.g. {'box_crowd': 'is_crowd'}.
  """
  image = np.asarray(example["image"], np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  h, w = image.shape[:2]
  objects = example.get("objects", {})
  bbox = np.asarray(objects.get("bbox", np.zeros((0, 4))), np.float32).reshape(-1, 4)
  boxes = (bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)).astype(np.float32)
  out = {"image": image, "boxes": boxes,
         "box_classes": np.asarray(objects.get("label", np.zeros(0)), np.int64).reshape(-1)}
  for field, key in dict(flags).items():
    out[field] = np.asarray(objects.get(key, np.zeros(0)), bool).reshape(-1)
  lengths = {k: len(v) for k, v in out.items() if k != "image"}
  if len(set(lengths.values())) > 1:
    raise UserError(f"{what}: its objects have different counts per field {lengths}; every object needs a box, "
                    f"a label and each flag")
  return out


class DroppedBoxes:
  """A thread-safe count of dropped degenerate boxes; logs the 1st, 2nd, 4th, 8th, ... with the example."""

  def __init__(self, dataset: str):
    self.dataset, self.count = dataset, 0
    self._lock = threading.Lock()

  def add(self, n: int, what: str) -> None:
    if not n:
      return
    with self._lock:
      before, self.count = self.count, self.count + n
      after = self.count
    if after.bit_length() > before.bit_length():   # crossed a power of two
      log.warning("dataset '%s': dropped %d box(es) without area (x2 <= x1 or y2 <= y1 after clipping to the "
                  "image) of %s; %d dropped so far", self.dataset, n, what, after)


def enter_boxes(boxes, valid: Optional[np.ndarray], per_box: Mapping[str, Tuple[str, np.ndarray]],
                image_hw: Sequence[int], num_classes: int, max_boxes: int, what: str,
                dropped: Optional[DroppedBoxes] = None) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
  """(boxes [M, 4] float32, valid [M] bool, {field: [M]}) of one example's boxes (see the module doc).

  Args:
    boxes: [N, 4] xyxy pixels of the image as read.
    valid: optional bool [N]: only these rows are boxes (a source that pads itself, like digits_det).
    per_box: {field: (kind, values)}: kind 'box_class' or 'box_flag' with [N] values, or 'box_mask' with
      [N, H, W] (or [N, H, W, 1]) 0/1 or bool masks of the image's size.
    image_hw: (H, W) of the image as read: boxes are clipped to it.
    num_classes: box_class values must be in 0..num_classes-1.
    max_boxes: M.
    what: the example, for messages ("example 7 of tfds voc/2007:test (dataset 'voc2007_det')").
    dropped: counts and logs the dropped degenerate boxes.
  """
  boxes = np.asarray(boxes, np.float32)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise UserError(f"{what}: boxes must be [N, 4] (x1, y1, x2, y2), got shape {boxes.shape}")
  n = len(boxes)
  values = {name: np.atleast_1d(np.asarray(v)) if kind == "box_mask" else np.asarray(v).reshape(-1)
            for name, (kind, v) in per_box.items()}
  if valid is not None:
    valid = np.asarray(valid, bool).reshape(-1)
    values["<validity>"] = valid
  counts = {k: len(v) for k, v in values.items() if len(v) != n}
  if counts:
    raise UserError(f"{what}: {n} boxes but per-box fields of other lengths {counts}; each box needs one value "
                    f"in every per-box field")
  for name, (kind, _) in per_box.items():
    if kind == "box_mask":
      values[name] = _box_masks(values[name], image_hw, name, what)
  keep = values.pop("<validity>") if valid is not None else np.ones(n, bool)
  boxes = boxes[keep]
  values = {k: v[keep] for k, v in values.items()}
  if not np.isfinite(boxes).all():
    row = int(np.flatnonzero(~np.isfinite(boxes).all(1))[0])
    raise UserError(f"{what}: box {row} has coordinates {boxes[row].tolist()}; want finite numbers")
  for name, (kind, _) in per_box.items():
    if kind == "box_class":
      classes = values[name]
      if not np.issubdtype(classes.dtype, np.integer) and len(classes) and (classes != np.round(classes)).any():
        raise UserError(f"{what}: '{name}' holds non-integer values; want classes 0..{num_classes - 1}")
      bad = (classes < 0) | (classes >= num_classes)
      if bad.any():
        raise UserError(f"{what}: '{name}' holds class {int(classes[bad][0])}; allowed: 0..{num_classes - 1} "
                        f"({num_classes} classes)")
  h, w = image_hw
  boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
  has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  if dropped is not None:
    dropped.add(int((~has_area).sum()), what)
  boxes = boxes[has_area]
  padded, slots = geometry.pad_boxes(boxes, max_boxes, what)
  out = {}
  for name, (kind, _) in per_box.items():
    column = np.zeros((max_boxes,) + (tuple(image_hw) if kind == "box_mask" else ()), PER_BOX_DTYPES[kind])
    column[:len(boxes)] = values[name][has_area]
    out[name] = column
  return padded, slots, out


def _box_masks(masks: np.ndarray, image_hw: Sequence[int], name: str, what: str) -> np.ndarray:
  """uint8 [N, H, W] of a box_mask field, or a UserError: one 0/1 mask of the image's size per box."""
  h, w = (int(v) for v in image_hw)
  if masks.ndim == 4 and masks.shape[-1] == 1:
    masks = masks[..., 0]
  if masks.size == 0 and masks.ndim != 3:
    return np.zeros((len(masks), h, w), np.uint8)
  if masks.ndim != 3 or masks.shape[1:] != (h, w):
    raise UserError(f"{what}: '{name}' has shape {masks.shape}; want [N, {h}, {w}]: one mask of the image's "
                    f"size ({h}x{w}) per box")
  if masks.dtype != np.bool_:
    bad = (masks != 0) & (masks != 1)
    if bad.any():
      raise UserError(f"{what}: '{name}' holds value {masks[bad][0].item()}; want 0/1 (or bool) instance masks")
  return np.asarray(masks, np.uint8)
