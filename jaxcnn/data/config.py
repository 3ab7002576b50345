"""The data part of an experiment config: its defaults and its validation."""
import dataclasses
from typing import Tuple

import ml_collections
from ml_collections import config_dict
import numpy as np

from jaxcnn.data import autoaugment, sources, transforms
from jaxcnn.errors import UserError

NORMALIZATIONS = ("standard", "unit", "symmetric", "clip")
RESIZES = ("fit", "stretch")
SAMPLERS = ("shuffle", "balanced")


def default_data_config() -> ml_collections.ConfigDict:
  """Every key the data pipeline reads, with its default; experiment configs start from this."""
  return ml_collections.ConfigDict({
      "name": "digits",
      # 0: native; an int S: S x S; a pair (H, W): H x W. Classification datasets resize every image to it
      # (bilinear); datasets with masks/boxes augment to it (scale, crop) and evaluate the image fitted into it.
      "image_size": config_dict.FieldReference(0, field_type=object),
      "channels": 0,             # 0: native; 3 from grayscale repeats, 1 from RGB takes luma
      "train_split": "",         # '': the dataset's default; tfds slicing allowed ('train[:90%]')
      "eval_split": "",
      # Comma list, applied in the listed order: crop, flip, randaugment, autoaugment (uint8 image), then
      # erase (normalised image, so last). '' or 'none': no augmentation. E.g. 'crop,flip,randaugment,erase'.
      # scale_crop (first if used): StackGAN's upscale by scale_crop_ratio and random crop back.
      # Datasets with masks or boxes: scale, crop, flip, zoom_out, iou_crop (boxes only) move every spatial
      # field together, photometric changes colours (then erase); 'scale,crop,flip' is the DeepLab /
      # torchvision segmentation recipe, 'photometric,zoom_out,iou_crop,flip' SSD's. See jaxcnn/data/geometry.py.
      "augment": "",
      "crop_padding": 4,         # pixels padded on each side before the random crop
      "crop_pad_mode": "constant",  # constant (zeros) | reflect
      "scale_crop_ratio": 76 / 64,  # scale_crop: read at int(image_size * ratio), crop image_size (StackGAN)
      "randaugment_n": 2,        # RandAugment ops per image (timm rand-m9-n2)
      "randaugment_m": 9.0,      # RandAugment magnitude, 0..10
      "randaugment_mstd": 0.0,   # per-op Gaussian jitter of the magnitude (timm mstd; DeiT 0.5; inf: U(0, m))
      "randaugment_prob": 0.5,   # probability that each drawn op is applied (timm: 0.5)
      "randaugment_increasing": False,  # timm 'inc1' (DeiT): every op gets stronger with m
      "erase_prob": 0.5,         # random erasing: probability per image
      "erase_area": (0.02, 1 / 3),   # erased fraction of the image area, (min, max)
      "erase_aspect": (0.3, 1 / 0.3),  # height/width of the erased rectangle, (min, max), log-uniform
      "erase_mode": "pixel",     # pixel: N(0, 1) per pixel | rand: one N(0, 1) colour | const: zeros
      "scale_range": (0.5, 2.0),  # scale: random factor range (DeepLab: 0.5-2.0)
      "scale_base": 0,           # scale: 0 = factor of the image's own size; > 0: shorter side = base * factor
      "zoom_out_range": (1.0, 4.0),  # zoom_out: canvas side / image side, drawn uniformly (SSD: up to 4)
      # Datasets with masks or boxes, after augmentation and in eval: fit = resize keeping the aspect ratio to
      # fit inside image_size, then pad bottom/right; stretch = resize to exactly image_size (SSD's 300 x 300).
      "resize": "fit",
      "resize_shorter": 0,       # fit: > 0 also limits the shorter side to this (image_size=1333, 800: Faster
                                 # R-CNN / RetinaNet's min_size 800, max_size 1333, padded to 1333 x 1333)
      "max_boxes": 0,            # box slots per example (0: the dataset's default: digits_det 4, VOC/COCO 100);
                                 # an example with more boxes is an error
      "context_length": 77,      # datasets with captions: token ids per caption (CLIP's 77; = the text model's)
      "max_captions": 0,         # datasets with captions: caption slots per image (0: the dataset's default)
      "frames": 0,               # video datasets: frames per clip, sampled uniformly (0: the dataset's default)
      "repeated_aug": 1,         # each drawn image appears this many times per global batch, augmented apart
      "sampler": "shuffle",      # shuffle: each example once per epoch | balanced: each class equally often
                                 # (datasets with a 'label'; see jaxcnn/data/pipeline.py)
      "normalize": "standard",   # standard: per-channel dataset mean/std | unit: [0, 1] | symmetric: [-1, 1]
                                 # | clip: OpenAI CLIP's mean/std (what converted CLIP weights expect)
      "data_dir": "",            # tfds: '' = default ($TFDS_DATA_DIR or ~/tensorflow_datasets); registered
                                 # datasets (cub_stackgan): the folder holding their files
      "download": False,         # prepare a missing tfds dataset (needs its download host)
      "manual_dir": "",          # folder with already downloaded archives (prepares without network)
      "num_threads": 2,          # grain reader threads (0: read in the calling thread)
      "prefetch": 2,             # batches read ahead
  })


_DEFAULTS = default_data_config().to_dict()


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A validated data config (see `default_data_config` for the meaning of each field)."""
  info: sources.DatasetInfo
  image_hw: Tuple[int, int]   # resolved (H, W): never 0
  channels: int            # resolved: never 0
  train_split: str
  eval_split: str
  augment: Tuple[str, ...]
  augment_options: transforms.AugmentOptions
  normalize: str
  data_dir: str
  download: bool
  manual_dir: str
  num_threads: int
  prefetch: int
  repeated_aug: int = 1    # copies of each drawn example per global batch (see pipeline's module doc)
  resize: str = "fit"      # how spatial examples reach image_hw: fit | stretch
  resize_shorter: int = 0  # fit: limit of the shorter side (0: none)
  max_boxes: int = 0       # resolved box slots per example (0 for datasets without boxes)
  context_length: int = 77  # token ids per caption ('text' fields)
  max_captions: int = 0    # resolved caption slots per example (0 for datasets without captions)
  frames: int = 0          # resolved frames per clip (0: an image dataset)
  sampler: str = "shuffle"  # shuffle | balanced (see pipeline's module doc)

  @property
  def name(self) -> str:
    return self.info.name

  @property
  def image_size(self):
    """The output size as a config writes it: an int when square, else (H, W)."""
    h, w = self.image_hw
    return h if h == w else (h, w)

  @property
  def image_shape(self) -> Tuple[int, ...]:
    """(H, W, C) of an image, (T, H, W, C) of a clip."""
    return ((self.frames,) if self.frames else ()) + (*self.image_hw, self.channels)

  @property
  def spatial(self) -> bool:
    """The dataset has masks or boxes: the geometric pipeline (see pipeline.py) handles its examples."""
    return self.info.spatial

  def source(self, split: str):
    return sources.get_source(self.name, split, data_dir=self.data_dir or None, download=self.download,
                              manual_dir=self.manual_dir or None)

  def mean_std(self) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (in [0, 1] units) that map the images to what `normalize` asks for."""
    if self.normalize == "unit":
      return np.zeros(self.channels, np.float32), np.ones(self.channels, np.float32)
    if self.normalize == "symmetric":
      return np.full(self.channels, 0.5, np.float32), np.full(self.channels, 0.5, np.float32)
    if self.normalize == "clip":
      from jaxcnn.models.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # pylint: disable=g-import-not-at-top
      if self.channels != 3:
        raise UserError(f"data.normalize='clip' is for RGB images: set data.channels=3 (got {self.channels})")
      return np.asarray(OPENAI_CLIP_MEAN, np.float32), np.asarray(OPENAI_CLIP_STD, np.float32)
    return self.dataset_mean_std()

  def dataset_mean_std(self) -> Tuple[np.ndarray, np.ndarray]:
    """The dataset's per-channel mean and std (in [0, 1] units) in the spec's channels, whatever `normalize`."""
    mean, std = sources.channel_stats(self.name, data_dir=self.data_dir or None, download=self.download,
                                      manual_dir=self.manual_dir or None)
    if len(mean) == self.channels:
      return mean, std
    if self.channels == 3:   # grayscale repeated: the same statistics in every channel
      return np.repeat(mean, 3), np.repeat(std, 3)
    # RGB -> luma: the mean is exact; w.std is exact for fully correlated channels
    # (nearly so for natural images) and an upper bound otherwise.
    w = transforms.LUMA_WEIGHTS
    return np.array([w @ mean], np.float32), np.array([w @ std], np.float32)


def _get(cfg, key):
  if isinstance(cfg, dict):
    return cfg.get(key, _DEFAULTS[key])
  return getattr(cfg, key, _DEFAULTS[key])


def _int(cfg, key, minimum: int) -> int:
  value = _get(cfg, key)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise UserError(f"data.{key} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _number(cfg, key, low: float, high: float = float("inf")) -> float:
  value = _get(cfg, key)
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not low <= value <= high:
    allowed = f"in [{low}, {high}]" if high != float("inf") else f">= {low}"
    raise UserError(f"data.{key} must be a number {allowed}, got {value!r}")
  return float(value)


def _range(cfg, key, low: float, high: float) -> Tuple[float, float]:
  """A (min, max) pair with low < min <= max <= high."""
  value = _get(cfg, key)
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    lo = hi = float("nan")
  if not low < lo <= hi <= high:
    raise UserError(f"data.{key} must be a pair (min, max) with {low} < min <= max <= {high}, got {value!r}")
  return lo, hi


def _zoom_out_range(cfg) -> Tuple[float, float]:
  value = _get(cfg, "zoom_out_range")
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    lo = hi = float("nan")
  if not 1.0 <= lo <= hi <= 16.0:
    raise UserError(f"data.zoom_out_range must be a pair (min, max) with 1 <= min <= max <= 16, got {value!r}")
  return lo, hi


def _image_hw(cfg, info) -> Tuple[int, int]:
  """data.image_size (0, S or (H, W)) as the resolved (H, W)."""
  value = _get(cfg, "image_size")
  if isinstance(value, (list, tuple)) and len(value) == 2 and all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value):
    return int(value[0]), int(value[1])
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise UserError(f"data.image_size must be an integer >= 0 (0: native, S: S x S) or a pair (H, W) of positive "
                    f"integers, got {value!r}")
  return (int(value), int(value)) if value else tuple(info.image_shape[:2])


def _augment_options(data_cfg, image_hw: Tuple[int, int]) -> transforms.AugmentOptions:
  image_size = min(image_hw)
  pad_mode = str(_get(data_cfg, "crop_pad_mode"))
  if pad_mode not in transforms.PAD_MODES:
    raise UserError(f"data.crop_pad_mode must be one of {', '.join(transforms.PAD_MODES)}, got {pad_mode!r}")
  crop_padding = _int(data_cfg, "crop_padding", 0)
  if pad_mode == "reflect" and crop_padding >= image_size:
    raise UserError(f"data.crop_padding={crop_padding} with reflect padding must be < the image size {image_size}")
  erase_mode = str(_get(data_cfg, "erase_mode"))
  if erase_mode not in transforms.ERASE_MODES:
    raise UserError(f"data.erase_mode must be one of {', '.join(transforms.ERASE_MODES)}, got {erase_mode!r}")
  increasing = _get(data_cfg, "randaugment_increasing")
  if not isinstance(increasing, (bool, np.bool_)):
    raise UserError(f"data.randaugment_increasing must be true or false, got {increasing!r}")
  ratio = _number(data_cfg, "scale_crop_ratio", 1.0, 4.0)
  return transforms.AugmentOptions(
      image_size=image_size, scale_crop_load=int(image_size * ratio),
      crop_padding=crop_padding, pad_mode=pad_mode,
      randaugment_n=_int(data_cfg, "randaugment_n", 0),
      randaugment_m=_number(data_cfg, "randaugment_m", 0.0, autoaugment.MAX_MAGNITUDE),
      randaugment_mstd=_number(data_cfg, "randaugment_mstd", 0.0),
      randaugment_prob=_number(data_cfg, "randaugment_prob", 0.0, 1.0),
      randaugment_increasing=bool(increasing),
      erase_prob=_number(data_cfg, "erase_prob", 0.0, 1.0),
      erase_area=_range(data_cfg, "erase_area", 0.0, 1.0),
      erase_aspect=_range(data_cfg, "erase_aspect", 0.0, float("inf")),
      erase_mode=erase_mode,
      scale_range=_range(data_cfg, "scale_range", 0.0, 16.0),
      scale_base=_int(data_cfg, "scale_base", 0),
      zoom_out_range=_zoom_out_range(data_cfg),
  )


def _check_augment_for_fields(info: sources.DatasetInfo, augment: Tuple[str, ...], augment_spec, image_hw) -> None:
  """Image-only geometric ops would misalign masks and boxes; scale needs them."""
  if info.spatial:
    targets = ", ".join(f"'{n}' ({k})" for n, k in info.fields if k in sources.SPATIAL_TARGET_KINDS)
    if "iou_crop" in augment and info.boxes_field is None:
      raise UserError(f"data.augment={augment_spec!r}: iou_crop chooses crops by their overlap with boxes; "
                      f"'{info.name}' has none (use crop)")
    allowed = tuple(n for n in transforms.SPATIAL_AUGMENTATIONS if info.boxes_field or n != "iou_crop")
    allowed += tuple(sorted(transforms.NORMALIZED_AUGMENTATIONS))
    for name in augment:
      if name not in allowed:
        raise UserError(f"data.augment={augment_spec!r}: {name} moves the image's pixels but not the {targets} of "
                        f"dataset '{info.name}'; allowed there: {', '.join(allowed)}")
  else:
    for name in transforms.SPATIAL_ONLY_AUGMENTATIONS:
      if name in augment:
        raise UserError(f"data.augment={augment_spec!r}: {name} is for datasets with masks or boxes; '{info.name}' "
                        f"has none (for classification use crop or scale_crop)")
  if "scale_crop" in augment and image_hw[0] != image_hw[1]:
    raise UserError(f"data.augment={augment_spec!r}: scale_crop needs a square data.image_size, got {image_hw}")


def resolve(data_cfg) -> DataSpec:
  """Validates a data config (ConfigDict, dict or any object with the attributes) into a DataSpec."""
  if isinstance(data_cfg, DataSpec):
    return data_cfg
  info = sources.dataset_info(str(_get(data_cfg, "name")))
  image_hw = _image_hw(data_cfg, info)
  channels = _int(data_cfg, "channels", 0) or info.image_shape[2]
  native_c = info.image_shape[2]
  if channels not in (native_c, 1, 3) or (channels == 3 and native_c not in (1, 3)):
    raise UserError(f"data.channels={channels} is not possible for '{info.name}' ({native_c} channels); "
                    f"allowed: 0 (native), 1, 3")
  augment_spec = _get(data_cfg, "augment")
  try:
    augment = transforms.parse_augment(augment_spec if augment_spec is not None else "")
  except ValueError as err:
    raise UserError(f"unknown augmentation '{err}' in data.augment={augment_spec!r}; allowed: a comma list of "
                    f"{', '.join(transforms.AUGMENTATION_NAMES)}, or '' / 'none'") from None
  leading = [n for n in augment if n in transforms.LEADING_AUGMENTATIONS]
  if leading and (len(leading) > 1 or augment[0] != leading[0]):
    raise UserError(f"data.augment={augment_spec!r}: {leading[0]} takes the image larger than the output and must "
                    f"come first, once")
  if sum(transforms.split_augment(augment), ()) != augment:
    late = ", ".join(sorted(transforms.NORMALIZED_AUGMENTATIONS))
    raise UserError(f"data.augment={augment_spec!r}: {late} acts on the normalised image and must come after "
                    f"every other augmentation")
  _check_augment_for_fields(info, augment, augment_spec, image_hw)
  augment_options = _augment_options(data_cfg, image_hw)
  normalize = str(_get(data_cfg, "normalize"))
  if normalize not in NORMALIZATIONS:
    raise UserError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
  resize = str(_get(data_cfg, "resize"))
  if resize not in RESIZES:
    raise UserError(f"data.resize must be one of {', '.join(RESIZES)}, got {resize!r}")
  resize_shorter = _int(data_cfg, "resize_shorter", 0)
  if resize_shorter and resize != "fit":
    raise UserError(f"data.resize_shorter={resize_shorter} limits the shorter side of data.resize='fit'; with "
                    f"data.resize={resize!r} set it to 0")
  max_boxes = _int(data_cfg, "max_boxes", 0) or info.max_boxes
  has_text = "text" in info.field_kinds.values()
  frames = _int(data_cfg, "frames", 0)
  if frames and not info.frames:
    raise UserError(f"data.frames={frames}: '{info.name}' is an image dataset, not a video one; set data.frames to 0")
  if info.frames and info.spatial:
    raise ValueError(f"dataset '{info.name}': clips with masks or boxes are not supported")
  max_captions = _int(data_cfg, "max_captions", 0) or info.max_captions
  sampler = str(_get(data_cfg, "sampler"))
  if sampler not in SAMPLERS:
    raise UserError(f"data.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
  if sampler == "balanced" and info.field_kinds.get("label") != "class":
    raise UserError(f"data.sampler='balanced' needs a dataset with class labels ('label'); '{info.name}' has none")
  return DataSpec(
      info=info, image_hw=image_hw, channels=channels,
      train_split=str(_get(data_cfg, "train_split") or info.train_split),
      eval_split=str(_get(data_cfg, "eval_split") or info.eval_split),
      augment=augment,
      augment_options=augment_options,
      normalize=normalize,
      data_dir=str(_get(data_cfg, "data_dir") or ""),
      download=bool(_get(data_cfg, "download")),
      manual_dir=str(_get(data_cfg, "manual_dir") or ""),
      num_threads=_int(data_cfg, "num_threads", 0),
      prefetch=_int(data_cfg, "prefetch", 0),
      repeated_aug=_int(data_cfg, "repeated_aug", 1),
      resize=resize,
      resize_shorter=resize_shorter,
      max_boxes=max_boxes if info.boxes_field else 0,
      context_length=_int(data_cfg, "context_length", 2),
      max_captions=max_captions if has_text else 0,
      frames=frames or info.frames,
      sampler=sampler,
  )
