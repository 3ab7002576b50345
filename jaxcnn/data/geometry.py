"""Geometric transforms that move every spatial field of an example together (numpy, per example, on the CPU).

An example is a dict of fields; `kinds` ({name: kind}, `DatasetInfo.field_kinds`)
says which are spatial: the 'image' (uint8 [H, W, C]) is resampled
bilinearly, every 'mask' (integer label map [H, W]) by nearest neighbour, and
every 'boxes' field (float [N, 4], x1, y1, x2, y2 in pixels) by the coordinate
map; fields of other kinds pass through unchanged. A boxes field `name` may come
with a bool [N] validity field `name + '_valid'` (fixed-size padded boxes); the
transforms keep it up to date, so padded and emptied boxes travel as invalid
slots instead of changing N.

Coordinates are pixel edges: pixel (row i, column j) covers [j, j + 1) x
[i, i + 1), and a box covers [x1, x2) x [y1, y2). Resizing from (h, w) to
(H, W) maps x -> x * W / w and y -> y * H / h, the half-pixel-centre
convention that PIL's bilinear resize (and F.interpolate with
align_corners=False) uses and that the nearest-neighbour mask resize follows
(output pixel i reads input pixel floor((i + 0.5) * h / H)); so a box and the
mask region it encloses stay together. A horizontal flip maps x -> W - x
(x1, x2 swap). A crop at (top, left) shifts by (-left, -top) and clips the
boxes to the crop; a box left without area (x2 <= x1 or y2 <= y1) is marked
invalid (its clipped coordinates are kept). Padding adds rows and columns at
the bottom and right (as torchvision's segmentation references pad), the
image with 0 (black, before normalisation), masks with the ignore label, so
no loss or metric counts the padding; boxes do not move.

Random transforms draw from the caller's `np.random.Generator` in this order
and amount: `random_scale` one uniform, `random_crop` one pair of integers
(after padding), `random_flip` one uniform (flip when < 0.5).
"""
from typing import Dict, Mapping, Tuple

import numpy as np

from jaxcnn.data import transforms
from jaxcnn.errors import UserError

Example = Dict[str, np.ndarray]


def _spatial(kinds: Mapping[str, str], example: Example, kind: str):
  return [name for name, k in kinds.items() if k == kind and name in example]


def size_of(example: Example) -> Tuple[int, int]:
  """(H, W) of the example's image."""
  return tuple(example["image"].shape[:2])


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
  """Nearest-neighbour resize of a label map [H, W] to `size` (int or (H, W)); output pixel i reads
  input pixel floor((i + 0.5) * h / H), the centre it falls in."""
  out_h, out_w = transforms.hw(size)
  h, w = mask.shape[:2]
  if (h, w) == (out_h, out_w):
    return mask
  rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.intp), h - 1)
  cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.intp), w - 1)
  return mask[rows[:, None], cols[None, :]]


def scale_boxes(boxes: np.ndarray, sy: float, sx: float) -> np.ndarray:
  """xyxy boxes [N, 4] with x scaled by sx and y by sy (float32)."""
  return (np.asarray(boxes, np.float32) * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)


def crop_boxes(boxes: np.ndarray, valid: np.ndarray, top: int, left: int, size) -> Tuple[np.ndarray, np.ndarray]:
  """Boxes of the window [left, left + W) x [top, top + H): shifted, clipped to it; those without area invalid."""
  h, w = transforms.hw(size)
  shifted = np.asarray(boxes, np.float32) - np.array([left, top, left, top], np.float32)
  clipped = np.clip(shifted, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
  has_area = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
  return clipped, np.asarray(valid, bool) & has_area


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """Boxes mirrored left-right in an image `width` pixels wide: (x1, x2) -> (W - x2, W - x1)."""
  boxes = np.asarray(boxes, np.float32)
  return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1).astype(np.float32)


def pad_boxes(boxes: np.ndarray, max_boxes: int, what: str = "an example") -> Tuple[np.ndarray, np.ndarray]:
  """[N, 4] boxes -> ([max_boxes, 4] float32 padded with zeros, bool [max_boxes] validity); more is an error."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if len(boxes) > max_boxes:
    raise UserError(f"{what} has {len(boxes)} boxes, more than the {max_boxes} allowed (data.max_boxes); "
                    f"raise data.max_boxes")
  out = np.zeros((max_boxes, 4), np.float32)
  out[:len(boxes)] = boxes
  return out, np.arange(max_boxes) < len(boxes)


def _valid(example: Example, name: str) -> np.ndarray:
  key = name + "_valid"
  return example[key] if key in example else np.ones(len(example[name]), bool)


def _set_boxes(out: Example, name: str, boxes: np.ndarray, valid: np.ndarray) -> None:
  out[name] = boxes
  if name + "_valid" in out:
    out[name + "_valid"] = valid


def resize(example: Example, kinds: Mapping[str, str], size) -> Example:
  """Every spatial field at `size` (int or (H, W)): image bilinear, masks nearest, boxes scaled."""
  out_h, out_w = transforms.hw(size)
  h, w = size_of(example)
  if (h, w) == (out_h, out_w):
    return example
  out = dict(example)
  out["image"] = transforms.resize(example["image"], (out_h, out_w))
  for name in _spatial(kinds, example, "mask"):
    out[name] = resize_mask(example[name], (out_h, out_w))
  for name in _spatial(kinds, example, "boxes"):
    out[name] = scale_boxes(example[name], out_h / h, out_w / w)
  return out


def pad(example: Example, kinds: Mapping[str, str], size, ignore_label: int) -> Example:
  """Pads the bottom and right to at least `size`: image with 0, masks with `ignore_label`."""
  min_h, min_w = transforms.hw(size)
  h, w = size_of(example)
  dh, dw = max(0, min_h - h), max(0, min_w - w)
  if not dh and not dw:
    return example
  out = dict(example)
  out["image"] = np.pad(example["image"], ((0, dh), (0, dw), (0, 0)))
  for name in _spatial(kinds, example, "mask"):
    out[name] = np.pad(example[name], ((0, dh), (0, dw)), constant_values=ignore_label)
  return out


def crop(example: Example, kinds: Mapping[str, str], top: int, left: int, size) -> Example:
  """The window [top, top + H) x [left, left + W) of every spatial field (it must lie inside the image)."""
  out_h, out_w = transforms.hw(size)
  out = dict(example)
  out["image"] = example["image"][top:top + out_h, left:left + out_w]
  for name in _spatial(kinds, example, "mask"):
    out[name] = example[name][top:top + out_h, left:left + out_w]
  for name in _spatial(kinds, example, "boxes"):
    _set_boxes(out, name, *crop_boxes(example[name], _valid(example, name), top, left, (out_h, out_w)))
  return out


def flip(example: Example, kinds: Mapping[str, str]) -> Example:
  """Every spatial field mirrored left-right."""
  out = dict(example)
  out["image"] = example["image"][:, ::-1]
  for name in _spatial(kinds, example, "mask"):
    out[name] = example[name][:, ::-1]
  for name in _spatial(kinds, example, "boxes"):
    out[name] = flip_boxes(example[name], size_of(example)[1])
  return out


def scaled_size(size: Tuple[int, int], scale: float, base: int = 0) -> Tuple[int, int]:
  """(H, W) times `scale`, or, with `base` > 0, with the shorter side at base * scale (aspect kept)."""
  h, w = size
  factor = scale * base / min(h, w) if base else scale
  return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def random_scale(example: Example, kinds: Mapping[str, str], rng: np.random.Generator,
                 scale_range: Tuple[float, float] = (0.5, 2.0), base: int = 0) -> Example:
  """Resizes by s ~ U(scale_range) (DeepLab's random scale), or to a shorter side of base * s (torchvision's
  RandomResize with base_size)."""
  scale = rng.uniform(scale_range[0], scale_range[1])
  return resize(example, kinds, scaled_size(size_of(example), scale, base))


def random_crop(example: Example, kinds: Mapping[str, str], rng: np.random.Generator, size,
                ignore_label: int) -> Example:
  """A `size` window at a uniformly random offset, after padding the bottom/right up to `size` if smaller."""
  out_h, out_w = transforms.hw(size)
  example = pad(example, kinds, (out_h, out_w), ignore_label)
  h, w = size_of(example)
  top, left = rng.integers(0, (h - out_h + 1, w - out_w + 1))
  return crop(example, kinds, int(top), int(left), (out_h, out_w))


def random_flip(example: Example, kinds: Mapping[str, str], rng: np.random.Generator) -> Example:
  """`flip` with probability 1/2."""
  return flip(example, kinds) if rng.random() < 0.5 else example


def fit(example: Example, kinds: Mapping[str, str], size, ignore_label: int) -> Example:
  """Resized, keeping the aspect ratio, to fit inside `size`, then padded at the bottom/right to exactly `size`.

  The factor is min(H / h, W / w); the longer relative side fills the output, so only one of the two
  sides is padded. An example already at `size` is returned as it is.
  """
  out_h, out_w = transforms.hw(size)
  h, w = size_of(example)
  if (h, w) == (out_h, out_w):
    return example
  factor = min(out_h / h, out_w / w)
  fitted = (min(out_h, max(1, int(round(h * factor)))), min(out_w, max(1, int(round(w * factor)))))
  return pad(resize(example, kinds, fitted), kinds, (out_h, out_w), ignore_label)
