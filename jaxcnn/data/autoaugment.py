"""RandAugment and AutoAugment's CIFAR-10 policy: per-example ops on uint8 images (PIL and numpy).

Both pick a *plan* first, a list of (op name, argument) pairs drawn from the
caller's `np.random.Generator`, and then apply it with `apply_plan`: the
random choices can be inspected and tested apart from the pixel work.

RandAugment (Cubuk et al. 2020) follows timm's `rand-mM-nN`: N ops drawn with
replacement from the paper's 14 ops, each applied with probability 0.5, at
magnitude M on a 0..10 scale (optionally jittered per op by a Gaussian of std
`mstd`, timm's 'mstd', clipped to [0, 10]). The magnitude -> argument mapping
is timm's (the TF EfficientNet one): rotate 3*M degrees, shear 0.03*M,
translate 0.045*M of the image side, each with a random sign; colour, contrast,
brightness and sharpness factors 0.1 + 0.18*M; solarize threshold int(25.6*M);
posterize keeps int(0.4*M) bits (so small M is the strongest for these four
ops). `increasing=True` is timm's 'inc1' (DeiT): enhancement factors
1 +- 0.09*M, threshold 256 - int(25.6*M), 4 - int(0.4*M) bits, so every op gets
stronger with M (at M = 0 only Posterize, AutoContrast and Equalize change the image).

AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) is one of its 25
sub-policies drawn uniformly, each of its two ops applied with its own
probability, with the magnitude levels (0..9) mapped as in the authors' CIFAR
code (tensorflow/models research/autoaugment): rotate int(3*level) degrees,
shear 0.03*level, translate level pixels per 32 pixels of side, random signs;
enhancement factors 0.1 + 0.18*level; solarize threshold 256 - int(25.6*level);
posterize keeps 4 - int(0.4*level) bits.

Geometric ops resample bilinearly (timm; the authors' code used nearest) and
fill uncovered pixels with gray 128 (timm's default). Point ops (AutoContrast,
Equalize, Invert, Solarize, Posterize) are numpy lookup tables equal to PIL
ImageOps' results; geometric and ImageEnhance ops are PIL's.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance

MAX_MAGNITUDE = 10.0
FILL = 128

# The 14 ops of the RandAugment paper (Cubuk et al. 2020, Fig. 2).
RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast",
                   "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")

# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019, appendix): 25 sub-policies of
# two (op, probability, magnitude level) each; AutoContrast/Equalize/Invert ignore the level.
CIFAR10_POLICY = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)

Plan = List[Tuple[str, float]]


# ---------------------------------------------------------------- ops
# Point ops are 8-bit lookup tables in numpy with PIL ImageOps' exact results
# (PIL builds its tables in Python loops: several times slower on small images).

def _flat_index(image: np.ndarray) -> np.ndarray:
  """value + 256 * channel for every element of a uint8 [H, W, C] image: one index into [C, 256] tables."""
  index = image.astype(np.intp)
  for c in range(1, image.shape[2]):
    index[..., c] += 256 * c
  return index


def _histograms(index: np.ndarray) -> np.ndarray:
  """[C, 256] per-channel pixel counts from `_flat_index`."""
  c = index.shape[2]
  return np.bincount(index.ravel(), minlength=256 * c).reshape(c, 256)


def _value_range(hist: np.ndarray):
  """Per channel (lowest, highest) value present, from [C, 256] histograms."""
  present = hist > 0
  return np.argmax(present, axis=1), 255 - np.argmax(present[:, ::-1], axis=1)


_IDENTITY = np.arange(256)


def auto_contrast(image: np.ndarray, _=None) -> np.ndarray:
  """Per channel, stretches [min, max] to [0, 255] (ImageOps.autocontrast with no cutoff)."""
  index = _flat_index(image)
  lo, hi = _value_range(_histograms(index))
  stretch = hi > lo
  scale = 255.0 / np.where(stretch, hi - lo, 1)
  # int(v * scale + offset) with offset = -lo * scale, clipped to [0, 255], as PIL computes it.
  stretched = np.clip(_IDENTITY * scale[:, None] - (lo * scale)[:, None], 0, 255).astype(np.uint8)
  return np.where(stretch[:, None], stretched, _IDENTITY).astype(np.uint8).ravel()[index]


def equalize(image: np.ndarray, _=None) -> np.ndarray:
  """Per-channel histogram equalisation (ImageOps.equalize)."""
  index = _flat_index(image)
  hist = _histograms(index)
  _, hi = _value_range(hist)
  step = (hist.sum(axis=1) - hist[np.arange(len(hist)), hi]) // 255
  equalizable = ((hist > 0).sum(axis=1) > 1) & (step > 0)
  below = np.cumsum(hist, axis=1) - hist        # pixels strictly below each value
  safe_step = np.maximum(step, 1)[:, None]
  equalized = np.minimum((safe_step // 2 + below) // safe_step, 255)
  return np.where(equalizable[:, None], equalized, _IDENTITY).astype(np.uint8).ravel()[index]


def invert(image: np.ndarray, _=None) -> np.ndarray:
  return 255 - image


def solarize(image: np.ndarray, threshold: float) -> np.ndarray:
  """Inverts every value >= threshold (ImageOps.solarize); 256 leaves the image unchanged."""
  return np.where(_IDENTITY < threshold, _IDENTITY, 255 - _IDENTITY).astype(np.uint8)[image]


def posterize(image: np.ndarray, bits: float) -> np.ndarray:
  """Keeps the `bits` high bits of every value (ImageOps.posterize; 0 bits: black, 8: unchanged)."""
  bits = int(bits)
  return image if bits >= 8 else image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _fill(img: Image.Image):
  return FILL if img.mode == "L" else (FILL,) * 3


def _affine(img: Image.Image, coefficients) -> Image.Image:
  # PIL's affine maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
  return img.transform(img.size, Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=_fill(img))


def _enhance(enhancer) -> Callable[[Image.Image, float], Image.Image]:
  return lambda img, factor: enhancer(img).enhance(factor)


# name -> (image, argument) -> image; arguments in the op's own units (degrees, pixels, factors, ...).
NUMPY_OPS: Dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "Identity": lambda image, _: image,
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Solarize": solarize,
    "Posterize": posterize,
}
PIL_OPS: Dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "Rotate": lambda img, degrees: img.rotate(degrees, resample=Image.BILINEAR, fillcolor=_fill(img)),
    "ShearX": lambda img, factor: _affine(img, (1, factor, 0, 0, 1, 0)),
    "ShearY": lambda img, factor: _affine(img, (1, 0, 0, factor, 1, 0)),
    "TranslateX": lambda img, pixels: _affine(img, (1, 0, pixels, 0, 1, 0)),
    "TranslateY": lambda img, pixels: _affine(img, (1, 0, 0, 0, 1, pixels)),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
}
OP_NAMES = frozenset(NUMPY_OPS) | frozenset(PIL_OPS)


def apply_plan(image: np.ndarray, plan: Plan) -> np.ndarray:
  """Applies (op, argument) pairs in order to a uint8 [H, W, 1 or 3] image.

  Converts between numpy and PIL only where the kind of op changes.
  """
  gray = image.shape[2] == 1

  def as_array(current):
    if isinstance(current, np.ndarray):
      return current
    return np.asarray(current)[..., None] if gray else np.asarray(current)

  current = image
  for name, argument in plan:
    if name in PIL_OPS:
      if isinstance(current, np.ndarray):
        current = Image.fromarray(current[..., 0] if gray else current)
      current = PIL_OPS[name](current, argument)
    else:
      current = NUMPY_OPS[name](as_array(current), argument)
  return as_array(current)


# ---------------------------------------------------------------- magnitude -> argument

def _random_sign(value: float, rng: np.random.Generator) -> float:
  return -value if rng.random() < 0.5 else value


# name -> (magnitude on the 0..10 scale, rng, image size (H, W)) -> argument.
Level = Callable[[float, np.random.Generator, Tuple[int, int]], float]
_NO_ARGUMENT: Level = lambda m, rng, size: 0.0


def _randaugment_levels(increasing: bool) -> Dict[str, Level]:
  """timm's level -> argument functions for RandAugment ('inc1' variants with `increasing`)."""
  geometric = {
      "Rotate": lambda m, rng, size: _random_sign(m / MAX_MAGNITUDE * 30.0, rng),
      "ShearX": lambda m, rng, size: _random_sign(m / MAX_MAGNITUDE * 0.3, rng),
      "ShearY": lambda m, rng, size: _random_sign(m / MAX_MAGNITUDE * 0.3, rng),
      "TranslateX": lambda m, rng, size: _random_sign(m / MAX_MAGNITUDE * 0.45, rng) * size[1],
      "TranslateY": lambda m, rng, size: _random_sign(m / MAX_MAGNITUDE * 0.45, rng) * size[0],
  }
  if increasing:
    enhance = lambda m, rng, size: max(0.1, 1.0 + _random_sign(m / MAX_MAGNITUDE * 0.9, rng))
    solarize = lambda m, rng, size: 256 - int(m / MAX_MAGNITUDE * 256)
    posterize = lambda m, rng, size: 4 - int(m / MAX_MAGNITUDE * 4)
  else:
    enhance = lambda m, rng, size: m / MAX_MAGNITUDE * 1.8 + 0.1
    solarize = lambda m, rng, size: int(m / MAX_MAGNITUDE * 256)
    posterize = lambda m, rng, size: int(m / MAX_MAGNITUDE * 4)
  return {"Identity": _NO_ARGUMENT, "AutoContrast": _NO_ARGUMENT, "Equalize": _NO_ARGUMENT, **geometric,
          "Solarize": solarize, "Posterize": posterize,
          "Color": enhance, "Contrast": enhance, "Brightness": enhance, "Sharpness": enhance}


RANDAUGMENT_LEVELS = _randaugment_levels(increasing=False)
RANDAUGMENT_INCREASING_LEVELS = _randaugment_levels(increasing=True)

_AUTOAUGMENT_ENHANCE: Level = lambda level, rng, size: level / MAX_MAGNITUDE * 1.8 + 0.1

# The authors' CIFAR mapping (levels 0..9 of a 10-step scale); translations in pixels, level per 32 pixels.
AUTOAUGMENT_LEVELS: Dict[str, Level] = {
    "AutoContrast": _NO_ARGUMENT, "Equalize": _NO_ARGUMENT, "Invert": _NO_ARGUMENT,
    "Rotate": lambda level, rng, size: _random_sign(float(int(level * 30 / MAX_MAGNITUDE)), rng),
    "ShearX": lambda level, rng, size: _random_sign(level * 0.3 / MAX_MAGNITUDE, rng),
    "ShearY": lambda level, rng, size: _random_sign(level * 0.3 / MAX_MAGNITUDE, rng),
    "TranslateX": lambda level, rng, size: _random_sign(float(level * size[1] // 32), rng),
    "TranslateY": lambda level, rng, size: _random_sign(float(level * size[0] // 32), rng),
    "Solarize": lambda level, rng, size: 256 - int(level * 256 / MAX_MAGNITUDE),
    "Posterize": lambda level, rng, size: 4 - int(level * 4 / MAX_MAGNITUDE),
    "Color": _AUTOAUGMENT_ENHANCE, "Contrast": _AUTOAUGMENT_ENHANCE,
    "Brightness": _AUTOAUGMENT_ENHANCE, "Sharpness": _AUTOAUGMENT_ENHANCE,
}


# ---------------------------------------------------------------- plans

def randaugment_plan(rng: np.random.Generator, size: Tuple[int, int], num_ops: int = 2, magnitude: float = 9.0,
                     magnitude_std: float = 0.0, prob: float = 0.5, increasing: bool = False,
                     ops: Sequence[str] = RANDAUGMENT_OPS) -> Plan:
  """The ops RandAugment applies to one image of `size` (H, W): timm's `rand-m{magnitude}-n{num_ops}`.

  `magnitude_std` > 0 draws each op's magnitude from N(magnitude, std), inf
  from U(0, magnitude), clipped to [0, 10]; each drawn op is skipped with
  probability 1 - `prob`.
  """
  levels = RANDAUGMENT_INCREASING_LEVELS if increasing else RANDAUGMENT_LEVELS
  plan = []
  for choice in rng.integers(0, len(ops), size=num_ops):
    if rng.random() >= prob:
      continue
    name = ops[choice]
    m = magnitude
    if magnitude_std == float("inf"):
      m = rng.uniform(0.0, magnitude)
    elif magnitude_std > 0:
      m = rng.normal(magnitude, magnitude_std)
    m = min(max(float(m), 0.0), MAX_MAGNITUDE)
    plan.append((name, levels[name](m, rng, size)))
  return plan


def autoaugment_plan(rng: np.random.Generator, size: Tuple[int, int],
                     policy: Sequence = CIFAR10_POLICY) -> Tuple[int, Plan]:
  """(index of the drawn sub-policy, the ops of it that apply) for one image of `size` (H, W)."""
  index = int(rng.integers(0, len(policy)))
  plan = []
  for name, prob, level in policy[index]:
    if rng.random() < prob:
      plan.append((name, AUTOAUGMENT_LEVELS[name](level, rng, size)))
  return index, plan


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.0, prob: float = 0.5, increasing: bool = False,
                 ops: Optional[Sequence[str]] = None) -> np.ndarray:
  """RandAugment on a uint8 [H, W, 1 or 3] image (see `randaugment_plan`)."""
  plan = randaugment_plan(rng, image.shape[:2], num_ops, magnitude, magnitude_std, prob, increasing,
                          ops or RANDAUGMENT_OPS)
  return apply_plan(image, plan)


def auto_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """AutoAugment's CIFAR-10 policy on a uint8 [H, W, 1 or 3] image."""
  return apply_plan(image, autoaugment_plan(rng, image.shape[:2])[1])
