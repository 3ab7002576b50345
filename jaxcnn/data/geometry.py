"""Geometric transforms that move every spatial field of an example together (numpy, per example, on the CPU).

An example is a dict of fields; `kinds` ({name: kind}, `DatasetInfo.field_kinds`)
says which are spatial: the 'image' (uint8 [H, W, C]) is resampled
bilinearly, every 'mask' (integer label map [H, W]) and every 'box_mask'
field (uint8 0/1 [N, H, W], one instance mask per box slot) by nearest
neighbour, and every 'boxes' field (float [N, 4], x1, y1, x2, y2 in pixels) by
the coordinate map; fields of other kinds pass through unchanged. A boxes
field `name` may come with a bool [N] validity field `name + '_valid'`
(fixed-size padded boxes); the transforms keep it up to date, so padded and
emptied boxes travel as invalid slots instead of changing N.

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
no loss or metric counts the padding, box masks with 0 (no instance there);
boxes do not move. A box mask moves exactly as the image does while its
slot's box is clipped, invalidated or flipped with it: a mask whose pixel
centres lie inside an integer-edged box (e.g. the tight box of its pixels)
has them inside the moved box after a flip, crop, pad, place or one resize;
a resize of a box with fractional edges can leave a mask pixel centre
outside it by less than one pixel of the coarser of the two sizes
(nearest-neighbour rounding).

Random transforms draw from the caller's `np.random.Generator` in this order
and amount: `random_scale` one uniform, `random_crop` one pair of integers
(after padding), `random_flip` one uniform (flip when < 0.5), `zoom_out` and
`iou_crop` as their docs say.

Detection augmentations of SSD (Liu et al. 2016), with torchvision's
references/detection RandomZoomOut and RandomIoUCrop as the model: `zoom_out`
places the image on a canvas up to 4 times its size filled with the dataset
mean (boxes shift with it, masks get the ignore label, box masks 0),
`iou_crop` takes a crop whose overlap with some box reaches a randomly chosen
minimum IoU and invalidates the boxes whose centres fall outside it. Neither
removes or reorders slots: a box that leaves is marked invalid, so every
per-box field (classes, flags, masks) stays aligned with its box.

Fixed-size outputs: `fit` (resize keeping the aspect ratio so that the image
fits inside H x W, optionally with the shorter side limited as torchvision's
GeneralizedRCNNTransform's min_size, then pad bottom/right) or `resize` to
exactly H x W ignoring the aspect ratio (SSD's 300 x 300). `fitted_size` says
what size `fit` resizes to, so boxes can be mapped back to the source image.
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
  return mask[_nearest(h, out_h)[:, None], _nearest(w, out_w)[None, :]]


def resize_box_masks(masks: np.ndarray, size) -> np.ndarray:
  """`resize_mask` of every mask of a stack [N, H, W] (the same pixel map for each)."""
  out_h, out_w = transforms.hw(size)
  h, w = masks.shape[-2:]
  if (h, w) == (out_h, out_w):
    return masks
  return masks[:, _nearest(h, out_h)[:, None], _nearest(w, out_w)[None, :]]


def _nearest(n: int, out_n: int) -> np.ndarray:
  """The input index each of `out_n` output pixels reads: the one its centre falls in."""
  return np.minimum(((np.arange(out_n) + 0.5) * (n / out_n)).astype(np.intp), n - 1)


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
  """Every spatial field at `size` (int or (H, W)): image bilinear, masks and box masks nearest, boxes scaled."""
  out_h, out_w = transforms.hw(size)
  h, w = size_of(example)
  if (h, w) == (out_h, out_w):
    return example
  out = dict(example)
  out["image"] = transforms.resize(example["image"], (out_h, out_w))
  for name in _spatial(kinds, example, "mask"):
    out[name] = resize_mask(example[name], (out_h, out_w))
  for name in _spatial(kinds, example, "box_mask"):
    out[name] = resize_box_masks(example[name], (out_h, out_w))
  for name in _spatial(kinds, example, "boxes"):
    out[name] = scale_boxes(example[name], out_h / h, out_w / w)
  return out


def pad(example: Example, kinds: Mapping[str, str], size, ignore_label: int) -> Example:
  """Pads the bottom and right to at least `size`: image with 0, masks with `ignore_label`, box masks with 0."""
  min_h, min_w = transforms.hw(size)
  h, w = size_of(example)
  dh, dw = max(0, min_h - h), max(0, min_w - w)
  if not dh and not dw:
    return example
  out = dict(example)
  out["image"] = np.pad(example["image"], ((0, dh), (0, dw), (0, 0)))
  for name in _spatial(kinds, example, "mask"):
    out[name] = np.pad(example[name], ((0, dh), (0, dw)), constant_values=ignore_label)
  for name in _spatial(kinds, example, "box_mask"):
    out[name] = np.pad(example[name], ((0, 0), (0, dh), (0, dw)))
  return out


def crop(example: Example, kinds: Mapping[str, str], top: int, left: int, size) -> Example:
  """The window [top, top + H) x [left, left + W) of every spatial field (it must lie inside the image)."""
  out_h, out_w = transforms.hw(size)
  out = dict(example)
  out["image"] = example["image"][top:top + out_h, left:left + out_w]
  for name in _spatial(kinds, example, "mask"):
    out[name] = example[name][top:top + out_h, left:left + out_w]
  for name in _spatial(kinds, example, "box_mask"):
    out[name] = example[name][:, top:top + out_h, left:left + out_w]
  for name in _spatial(kinds, example, "boxes"):
    _set_boxes(out, name, *crop_boxes(example[name], _valid(example, name), top, left, (out_h, out_w)))
  return out


def flip(example: Example, kinds: Mapping[str, str]) -> Example:
  """Every spatial field mirrored left-right."""
  out = dict(example)
  out["image"] = example["image"][:, ::-1]
  for name in _spatial(kinds, example, "mask"):
    out[name] = example[name][:, ::-1]
  for name in _spatial(kinds, example, "box_mask"):
    out[name] = example[name][:, :, ::-1]
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


def fitted_size(hw: Tuple[int, int], size, shorter: int = 0) -> Tuple[int, int]:
  """The (h, w) that `fit` resizes an (h, w) image to before padding it to `size`.

  The factor is min(H / h, W / w), and with `shorter` > 0 also at most shorter / min(h, w) (torchvision's
  min_size: with size = (1333, 1333) and shorter = 800, its 800 / 1333 rule).
  """
  out_h, out_w = transforms.hw(size)
  h, w = hw
  factor = min(out_h / h, out_w / w)
  if shorter:
    factor = min(factor, shorter / min(h, w))
  return min(out_h, max(1, int(round(h * factor)))), min(out_w, max(1, int(round(w * factor))))


def fit(example: Example, kinds: Mapping[str, str], size, ignore_label: int, shorter: int = 0) -> Example:
  """Resized, keeping the aspect ratio, to `fitted_size`, then padded at the bottom/right to exactly `size`.

  Without `shorter` the longer relative side fills the output, so only one of the two sides is padded.
  An example already at `size` (and, with `shorter`, at its fitted size) is returned as it is.
  """
  out_h, out_w = transforms.hw(size)
  hw = size_of(example)
  fitted = fitted_size(hw, (out_h, out_w), shorter)
  if hw == (out_h, out_w) and fitted == hw:
    return example
  return pad(resize(example, kinds, fitted), kinds, (out_h, out_w), ignore_label)


def place(example: Example, kinds: Mapping[str, str], top: int, left: int, canvas_hw, fill,
          ignore_label: int) -> Example:
  """The example pasted at (top, left) of a canvas: image filled with `fill` (per channel), masks with
  `ignore_label`, box masks with 0, boxes shifted by (left, top)."""
  h, w = size_of(example)
  canvas_h, canvas_w = canvas_hw
  image = example["image"]
  out = dict(example)
  canvas = np.empty((canvas_h, canvas_w, image.shape[2]), image.dtype)
  canvas[...] = np.broadcast_to(np.asarray(fill, image.dtype), (image.shape[2],))
  canvas[top:top + h, left:left + w] = image
  out["image"] = canvas
  for name in _spatial(kinds, example, "mask"):
    mask = np.full((canvas_h, canvas_w), ignore_label, example[name].dtype)
    mask[top:top + h, left:left + w] = example[name]
    out[name] = mask
  for name in _spatial(kinds, example, "box_mask"):
    masks = np.zeros((len(example[name]), canvas_h, canvas_w), example[name].dtype)
    masks[:, top:top + h, left:left + w] = example[name]
    out[name] = masks
  for name in _spatial(kinds, example, "boxes"):
    out[name] = (np.asarray(example[name], np.float32) + np.array([left, top, left, top], np.float32))
  return out


def zoom_out(example: Example, kinds: Mapping[str, str], rng: np.random.Generator, fill, ignore_label: int,
             side_range: Tuple[float, float] = (1.0, 4.0), p: float = 0.5) -> Example:
  """SSD's zoom out (torchvision's RandomZoomOut): with probability p, the image on a canvas r times its size.

  Draws: one uniform u (zoom when u < p); then r = side_range[0] + U * (side_range[1] - side_range[0]), the
  canvas int(w * r) x int(h * r), and two uniforms (a, b) placing the image at left = int((W - w) * a),
  top = int((H - h) * b). The canvas is filled with `fill` (the dataset mean, in uint8), masks with the
  ignore label, box masks with 0; boxes shift with the image.
  """
  if rng.random() >= p:
    return example
  h, w = size_of(example)
  r = side_range[0] + rng.random() * (side_range[1] - side_range[0])
  canvas_w, canvas_h = int(w * r), int(h * r)
  a, b = rng.random(2)
  left, top = int((canvas_w - w) * a), int((canvas_h - h) * b)
  return place(example, kinds, top, left, (canvas_h, canvas_w), fill, ignore_label)


IOU_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)   # minimum IoUs; 1.0: leave the example as it is
IOU_CROP_MAX_ROUNDS = 1000


def box_iou(boxes: np.ndarray, box) -> np.ndarray:
  """IoU of every xyxy box [N, 4] with one box."""
  boxes = np.asarray(boxes, np.float64)
  x1, y1, x2, y2 = (float(v) for v in box)
  iw = np.clip(np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1), 0, None)
  ih = np.clip(np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1), 0, None)
  inter = iw * ih
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return inter / (areas + (x2 - x1) * (y2 - y1) - inter)


def iou_crop(example: Example, kinds: Mapping[str, str], rng: np.random.Generator,
             scale: Tuple[float, float] = (0.3, 1.0), aspect: Tuple[float, float] = (0.5, 2.0),
             options: Tuple[float, ...] = IOU_CROP_OPTIONS, trials: int = 40) -> Example:
  """SSD's minimum-IoU random crop (torchvision's RandomIoUCrop), on the valid boxes of the first boxes field.

  Each round draws a minimum IoU from `options` (an integer index); 1.0 leaves the example as it is.
  Otherwise up to `trials` candidates, each: two uniforms giving the crop's w = int(W * s0), h = int(H * s1)
  with s = scale[0] + (scale[1] - scale[0]) * U (rejected unless aspect[0] <= w / h <= aspect[1]), two
  uniforms giving left = int((W - w) * a), top = int((H - h) * b), rejected unless some valid box has its
  centre strictly inside the crop and one of those boxes has IoU >= the minimum with the crop. The first
  accepted crop is taken: boxes shifted and clipped to it, those whose centres fall outside invalidated.
  When every trial fails a new round starts. An example without valid boxes is left as it is (torchvision
  loops until it draws 1.0, which leaves it as it is too); so is one after IOU_CROP_MAX_ROUNDS rounds,
  which never happens in practice (each round ends the search with probability 1/7).
  """
  names = _spatial(kinds, example, "boxes")
  valid = np.zeros(0, bool)
  boxes = np.zeros((0, 4), np.float32)
  if names:
    boxes = np.asarray(example[names[0]], np.float32)
    valid = np.asarray(_valid(example, names[0]), bool)
  if not valid.any():
    return example
  h, w = size_of(example)
  cx, cy = 0.5 * (boxes[:, 0] + boxes[:, 2]), 0.5 * (boxes[:, 1] + boxes[:, 3])
  for _ in range(IOU_CROP_MAX_ROUNDS):
    min_iou = options[int(rng.integers(len(options)))]
    if min_iou >= 1.0:
      return example
    for _ in range(trials):
      s = scale[0] + (scale[1] - scale[0]) * rng.random(2)
      new_w, new_h = int(w * s[0]), int(h * s[1])
      if not new_w or not new_h or not aspect[0] <= new_w / new_h <= aspect[1]:
        continue
      a, b = rng.random(2)
      left, top = int((w - new_w) * a), int((h - new_h) * b)
      right, bottom = left + new_w, top + new_h
      inside = valid & (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
      if not inside.any() or box_iou(boxes[inside], (left, top, right, bottom)).max() < min_iou:
        continue
      out = crop(example, kinds, top, left, (new_h, new_w))
      out[names[0] + "_valid"] = _valid(out, names[0]) & inside   # added when the example had none
      return out
  return example
