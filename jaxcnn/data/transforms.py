"""Per-example image transforms on the CPU, in numpy.

Every function takes one uint8 image [H, W, C] (NHWC without the N) and
returns a new array; random ones also take an `np.random.Generator`, so the
caller decides where randomness comes from (the pipeline seeds it by the
example's global stream position, which keeps multi-process runs identical to
single-process ones).

Augmentations are looked up by name in `AUGMENTATIONS`: a new one (RandAugment,
random erasing, ...) is a function `(image, rng, options) -> image` added to
that table. Batch-level mixing (Mixup/CutMix) would act after batching and is
not part of this per-example table.
"""
from typing import Callable, Dict, NamedTuple, Sequence

import numpy as np
from PIL import Image

# ITU-R BT.601 luma weights, the usual RGB -> grayscale conversion (PIL's "L").
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
PAD_MODES = ("constant", "reflect")


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a uint8 [H, W, C] image to [size, size, C] (PIL)."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  if image.shape[2] == 3:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
  # Other channel counts one plane at a time: PIL would read 2 or 4 channels as
  # having alpha and premultiply by it.
  planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((size, size), Image.BILINEAR))
            for c in range(image.shape[2])]
  return np.stack(planes, axis=2)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
  """`resize` applied to every image of a uint8 [N, H, W, C] array."""
  if images.shape[1] == size and images.shape[2] == size:
    return images
  return np.stack([resize(im, size) for im in images]) if len(images) else np.zeros(
      (0, size, size, images.shape[3]), np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """Converts 1 -> 3 channels by repeating and 3 -> 1 by luma; same count is a no-op."""
  have = image.shape[2]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=2)
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


class AugmentOptions(NamedTuple):
  """What the augmentations may be parameterised by (from the data config)."""
  crop_padding: int = 4
  pad_mode: str = "constant"


Augmentation = Callable[[np.ndarray, np.random.Generator, AugmentOptions], np.ndarray]

AUGMENTATIONS: Dict[str, Augmentation] = {
    "crop": lambda image, rng, opt: random_crop(image, rng, opt.crop_padding, opt.pad_mode),
    "flip": lambda image, rng, opt: random_flip(image, rng),
}


def parse_augment(spec: str) -> tuple:
  """'crop, flip' -> ('crop', 'flip'); '' and 'none' -> (). Raises ValueError on unknown names."""
  names = tuple(part.strip() for part in str(spec).split(",") if part.strip())
  if names in ((), ("none",)):
    return ()
  for name in names:
    if name not in AUGMENTATIONS:
      raise ValueError(name)
  return names


def augment(image: np.ndarray, rng: np.random.Generator, names: Sequence[str],
            options: AugmentOptions) -> np.ndarray:
  """Applies the named augmentations in order, all drawing from the same generator."""
  for name in names:
    image = AUGMENTATIONS[name](image, rng, options)
  return image
