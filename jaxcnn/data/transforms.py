"""Per-example image transforms on the CPU, in numpy.

Every function takes one uint8 image [H, W, C] (NHWC without the N) and
returns a new array; random ones also take an `np.random.Generator`, so the
caller decides where randomness comes from (the pipeline seeds it by the
example's global stream position, which keeps multi-process runs identical to
single-process ones).

Augmentations are looked up by name in `AUGMENTATIONS`: each is a function
`(image, rng, options) -> image`. They run in the order `data.augment` lists
them, on the uint8 image, except those in `NORMALIZED_AUGMENTATIONS` (random
erasing), which act on the normalised float32 image and so must come last in
the list. A typical CIFAR recipe: 'crop,flip,randaugment,erase'. `scale_crop`
(StackGAN's resize to 76/64 of the size and random crop back) must come first.
`photometric` is SSD's colour distortion (`photometric_distort`), usable on
every dataset; SSD's detection recipe is 'photometric,zoom_out,iou_crop,flip'
(the geometric ones are in `geometry`).
Batch-level mixing (Mixup/CutMix) acts after batching, on device, and is not
part of this per-example table.
"""
from typing import Callable, Dict, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image

from jaxcnn.data import autoaugment

# ITU-R BT.601 luma weights, the usual RGB -> grayscale conversion (PIL's "L").
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
PAD_MODES = ("constant", "reflect")


def hw(size) -> Tuple[int, int]:
  """An image size, int (square) or (H, W), as (H, W)."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def resize(image: np.ndarray, size) -> np.ndarray:
  """Bilinear resize of a uint8 [H, W, C] image to [size, size, C] or, with size = (h, w), [h, w, C] (PIL).

  A clip [T, H, W, C] is resized frame by frame."""
  h, w = hw(size)
  if image.ndim == 4:
    return image if image.shape[1:3] == (h, w) else np.stack([resize(frame, (h, w)) for frame in image])
  if image.shape[0] == h and image.shape[1] == w:
    return image
  if image.shape[2] == 3:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  # Other channel counts one plane at a time: PIL would read 2 or 4 channels as
  # having alpha and premultiply by it.
  planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((w, h), Image.BILINEAR))
            for c in range(image.shape[2])]
  return np.stack(planes, axis=2)


def resize_batch(images: np.ndarray, size) -> np.ndarray:
  """`resize` applied to every image of a uint8 [N, H, W, C] array (or every clip of [N, T, H, W, C])."""
  h, w = hw(size)
  if images.shape[-3] == h and images.shape[-2] == w:
    return images
  return np.stack([resize(im, (h, w)) for im in images]) if len(images) else np.zeros(
      images.shape[:-3] + (h, w, images.shape[-1]), np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """Converts 1 -> 3 channels by repeating and 3 -> 1 by luma; same count is a no-op. [..., C]: images or clips."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if have == 3 and channels == 1:
    gray = image.astype(np.float32) @ LUMA_WEIGHTS
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f"cannot convert {have} channels to {channels}")


def random_crop(image: np.ndarray, rng: np.random.Generator, padding: int,
                pad_mode: str = "constant") -> np.ndarray:
  """Pads `padding` pixels on every side, then crops back to the original size at a random offset.

  `pad_mode` 'constant' pads with zeros (torchvision RandomCrop(padding=p)),
  'reflect' mirrors the border without repeating the edge pixel.
  """
  if padding <= 0:
    return image
  h, w = image.shape[:2]
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  if pad_mode == "reflect":
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
    return padded[top:top + h, left:left + w]
  # Zero padding without building the padded image: out[y, x] = image[y + dy, x + dx] where inside.
  dy, dx = int(top) - padding, int(left) - padding
  y0, y1, x0, x1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
  out = np.zeros_like(image)
  if y0 < y1 and x0 < x1:
    out[y0:y1, x0:x1] = image[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
  return out


def scale_crop(image: np.ndarray, rng: np.random.Generator, size: int, load_size: int) -> np.ndarray:
  """StackGAN's augmentation: the image at load_size x load_size, then a size x size crop at a random offset.

  The authors resize each bird crop to load_size = size * 76 / 64 (bilinear)
  and take torchvision's RandomCrop(size): both offsets uniform in
  0..load_size - size. An image not yet at load_size is resized here (the
  pipeline reads file-based images at load_size directly, so they are resampled once).
  """
  if image.shape[0] != load_size or image.shape[1] != load_size:
    image = resize(image, load_size)
  top, left = rng.integers(0, load_size - size + 1, size=2)
  return image[top:top + size, left:left + size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors the image left-right with probability 1/2."""
  if rng.random() < 0.5:
    return image[:, ::-1]
  return image


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 [H, W, C] -> float32 (image / 255 - mean) / std, per channel (mean/std in [0, 1] units)."""
  mean = np.asarray(mean, np.float32)
  scale = np.float32(1 / 255) / np.asarray(std, np.float32)
  out = image.astype(np.float32)
  out *= scale
  out -= mean / np.asarray(std, np.float32)
  return out


ERASE_MODES = ("pixel", "rand", "const")


def random_erase(image: np.ndarray, rng: np.random.Generator, prob: float = 0.5,
                 area: Tuple[float, float] = (0.02, 1 / 3), aspect: Tuple[float, float] = (0.3, 1 / 0.3),
                 mode: str = "pixel", max_attempts: int = 10) -> np.ndarray:
  """Random erasing (Zhong et al. 2020) as timm's RandomErasing, on a normalised [H, W, C] image.

  With probability `prob`, draws a rectangle of area U(area) * H * W and
  height/width ratio log-uniform in `aspect` (up to `max_attempts` draws until
  it fits strictly inside the image) and overwrites it: 'pixel' with N(0, 1)
  per pixel and channel, 'rand' with one N(0, 1) colour, 'const' with zeros,
  i.e. the dataset mean under 'standard' normalisation.
  """
  if rng.random() >= prob:
    return image
  h, w, c = image.shape
  # All attempts drawn at once (two generator calls instead of twenty); the first that fits is used.
  target_area = rng.uniform(area[0], area[1], max_attempts) * (h * w)
  ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), max_attempts))
  heights = np.rint(np.sqrt(target_area * ratio)).astype(int)
  widths = np.rint(np.sqrt(target_area / ratio)).astype(int)
  fits = np.flatnonzero((heights < h) & (widths < w))
  if not len(fits):
    return image
  eh, ew = heights[fits[0]], widths[fits[0]]
  top, left = rng.integers(0, (h - eh + 1, w - ew + 1))
  out = image.copy()
  if mode == "pixel":
    out[top:top + eh, left:left + ew] = rng.standard_normal((eh, ew, c), dtype=np.float32)
  elif mode == "rand":
    out[top:top + eh, left:left + ew] = rng.standard_normal(c, dtype=np.float32)
  else:
    out[top:top + eh, left:left + ew] = 0
  return out


# SSD's photometric distortion with torchvision's references/detection RandomPhotometricDistort defaults.
PHOTOMETRIC_BRIGHTNESS = (0.875, 1.125)
PHOTOMETRIC_CONTRAST = (0.5, 1.5)
PHOTOMETRIC_SATURATION = (0.5, 1.5)
PHOTOMETRIC_HUE = (-0.05, 0.05)


def _blend(image: np.ndarray, other, ratio: float) -> np.ndarray:
  """ratio * image + (1 - ratio) * other in float32, clipped to 0..255 and truncated to uint8 (torchvision's
  tensor kernels on uint8 images)."""
  out = np.float32(ratio) * image.astype(np.float32) + np.float32(1.0 - ratio) * np.asarray(other, np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
  """[H, W, 1] uint8 luma of an RGB image as torchvision's tensor rgb_to_grayscale computes it (truncated);
  a 1-channel image as it is."""
  if image.shape[2] == 1:
    return image
  rgb = image.astype(np.float32)
  gray = np.float32(0.2989) * rgb[..., 0] + np.float32(0.587) * rgb[..., 1] + np.float32(0.114) * rgb[..., 2]
  return gray.astype(np.uint8)[..., None]


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
  return _blend(image, 0.0, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """Blend with the mean luma (the mean of a 1-channel image)."""
  return _blend(image, grayscale(image).astype(np.float32).mean(dtype=np.float32), factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
  """Blend with the luma image; 1-channel images are returned as they are (as torchvision and PIL do)."""
  if image.shape[2] == 1:
    return image
  return _blend(image, grayscale(image), factor)


def adjust_hue(image: np.ndarray, factor: float) -> np.ndarray:
  """Hue shifted by `factor` turns (HSV in float32 as torchvision's tensor kernel; 1-channel images unchanged)."""
  if image.shape[2] == 1:
    return image
  rgb = image.astype(np.float32) / np.float32(255)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc, minc = rgb.max(-1), rgb.min(-1)
  equal = maxc == minc
  chroma = maxc - minc
  ones = np.ones_like(maxc)
  s = chroma / np.where(equal, ones, maxc)
  divisor = np.where(equal, ones, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  hr = (maxc == r) * (bc - gc)
  hg = ((maxc == g) & (maxc != r)) * (np.float32(2.0) + rc - bc)
  hb = ((maxc != g) & (maxc != r)) * (np.float32(4.0) + gc - rc)
  h = np.fmod((hr + hg + hb) / np.float32(6.0) + np.float32(1.0), np.float32(1.0))
  h = np.mod(h + np.float32(factor), np.float32(1.0))
  v = maxc
  i = np.floor(h * np.float32(6.0))
  f = h * np.float32(6.0) - i
  i = i.astype(np.int32) % 6
  p = np.clip(v * (np.float32(1.0) - s), 0.0, 1.0)
  q = np.clip(v * (np.float32(1.0) - s * f), 0.0, 1.0)
  t = np.clip(v * (np.float32(1.0) - s * (np.float32(1.0) - f)), 0.0, 1.0)
  table = np.stack([np.stack(c, -1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], -2)
  out = np.take_along_axis(table, i[..., None, None], axis=-1)[..., 0]
  return (out * np.float32(255 + 1 - 1e-3)).astype(np.uint8)


def photometric_distort(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """SSD's photometric distortion, torchvision's references/detection RandomPhotometricDistort on uint8 tensors.

  Draws u = 7 uniforms first. Brightness (factor ~ U(0.875, 1.125)) when u0 < p; contrast (U(0.5, 1.5))
  before the colour ops when u1 < 0.5 and u2 < p, else after them when u5 < p; saturation (U(0.5, 1.5))
  when u3 < p; hue (U(-0.05, 0.05)) when u4 < p; the channels permuted (rng.permutation) when u6 < p.
  Each factor is drawn when its op runs, in that order. Grayscale images work: saturation and hue leave
  them unchanged (as torchvision does) and permuting one channel changes nothing.
  """
  u = rng.random(7)
  if u[0] < p:
    image = adjust_brightness(image, rng.uniform(*PHOTOMETRIC_BRIGHTNESS))
  contrast_before = u[1] < 0.5
  if contrast_before and u[2] < p:
    image = adjust_contrast(image, rng.uniform(*PHOTOMETRIC_CONTRAST))
  if u[3] < p:
    image = adjust_saturation(image, rng.uniform(*PHOTOMETRIC_SATURATION))
  if u[4] < p:
    image = adjust_hue(image, rng.uniform(*PHOTOMETRIC_HUE))
  if not contrast_before and u[5] < p:
    image = adjust_contrast(image, rng.uniform(*PHOTOMETRIC_CONTRAST))
  if u[6] < p:
    image = image[..., rng.permutation(image.shape[2])]
  return image


class AugmentOptions(NamedTuple):
  """What the augmentations may be parameterised by (from the data config; see `default_data_config`)."""
  crop_padding: int = 4
  pad_mode: str = "constant"
  randaugment_n: int = 2
  randaugment_m: float = 9.0
  randaugment_mstd: float = 0.0
  randaugment_prob: float = 0.5
  randaugment_increasing: bool = False
  erase_prob: float = 0.5
  erase_area: Tuple[float, float] = (0.02, 1 / 3)
  erase_aspect: Tuple[float, float] = (0.3, 1 / 0.3)
  erase_mode: str = "pixel"
  image_size: int = 0          # scale_crop: the output size (the spec's image size)
  scale_crop_load: int = 0     # scale_crop: the size it crops from (int(image_size * data.scale_crop_ratio))
  scale_range: Tuple[float, float] = (0.5, 2.0)   # scale: factor drawn uniformly from this range
  scale_base: int = 0          # scale: 0 = relative to the image; > 0: shorter side = scale_base * factor
  zoom_out_range: Tuple[float, float] = (1.0, 4.0)   # zoom_out: canvas side / image side, drawn uniformly


Augmentation = Callable[[np.ndarray, np.random.Generator, AugmentOptions], np.ndarray]

AUGMENTATIONS: Dict[str, Augmentation] = {
    "crop": lambda image, rng, opt: random_crop(image, rng, opt.crop_padding, opt.pad_mode),
    "flip": lambda image, rng, opt: random_flip(image, rng),
    "scale_crop": lambda image, rng, opt: scale_crop(image, rng, opt.image_size, opt.scale_crop_load),
    "randaugment": lambda image, rng, opt: autoaugment.rand_augment(
        image, rng, opt.randaugment_n, opt.randaugment_m, opt.randaugment_mstd, opt.randaugment_prob,
        opt.randaugment_increasing),
    "autoaugment": lambda image, rng, opt: autoaugment.auto_augment(image, rng),
    "erase": lambda image, rng, opt: random_erase(image, rng, opt.erase_prob, opt.erase_area, opt.erase_aspect,
                                                  opt.erase_mode),
    "photometric": lambda image, rng, opt: photometric_distort(image, rng),
}

# Augmentations of datasets with spatial targets (masks, boxes). The geometric ones move every spatial field
# together (`geometry`): random scale by data.scale_range, random crop to data.image_size (padding when
# smaller), flip, SSD's zoom_out (canvas up to data.zoom_out_range times the image, filled with the dataset
# mean) and iou_crop (minimum-IoU crop; boxes needed). `crop` and `flip` mean these on such datasets and the
# image-only ops above otherwise. photometric changes only colours, so it is allowed on both.
SPATIAL_AUGMENTATIONS = ("scale", "crop", "flip", "zoom_out", "iou_crop", "photometric")
SPATIAL_ONLY_AUGMENTATIONS = tuple(n for n in SPATIAL_AUGMENTATIONS if n not in AUGMENTATIONS)
AUGMENTATION_NAMES = tuple(AUGMENTATIONS) + SPATIAL_ONLY_AUGMENTATIONS

# Augmentations of the normalised float32 image: applied after `normalize`, after all the others.
NORMALIZED_AUGMENTATIONS = frozenset({"erase"})
# Augmentations that take a larger image than the output (the pipeline reads it at that size): listed first.
LEADING_AUGMENTATIONS = frozenset({"scale_crop"})


def parse_augment(spec: str) -> tuple:
  """'crop, flip' -> ('crop', 'flip'); '' and 'none' -> (). Raises ValueError on unknown names."""
  names = tuple(part.strip() for part in str(spec).split(",") if part.strip())
  if names in ((), ("none",)):
    return ()
  for name in names:
    if name not in AUGMENTATION_NAMES:
      raise ValueError(name)
  return names


def split_augment(names: Sequence[str]) -> Tuple[tuple, tuple]:
  """(augmentations of the uint8 image, those of the normalised image), each in the listed order."""
  return (tuple(n for n in names if n not in NORMALIZED_AUGMENTATIONS),
          tuple(n for n in names if n in NORMALIZED_AUGMENTATIONS))


def augment(image: np.ndarray, rng: np.random.Generator, names: Sequence[str],
            options: AugmentOptions) -> np.ndarray:
  """Applies the named augmentations in order, all drawing from the same generator.

  Names of one stage only: uint8 ones before `normalize`, NORMALIZED_AUGMENTATIONS after it
  (`split_augment` separates them). A clip [T, H, W, C] gets the same draws on every frame (the
  generator is rewound to its starting state per frame, so one crop, flip, erase... for the whole
  clip); the generator ends where one image's augmentation leaves it.
  """
  if image.ndim == 4 and names:
    start = rng.bit_generator.state
    frames = []
    for frame in image:
      rng.bit_generator.state = start
      frames.append(augment(frame, rng, names, options))
    return np.stack(frames)
  for name in names:
    image = AUGMENTATIONS[name](image, rng, options)
  return image
