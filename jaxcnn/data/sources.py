"""Datasets by name: what they are (`DatasetInfo`) and random access to a split (`get_source`).

A source is anything with `len(src)` and `src[i] -> {'image': uint8 [H, W, C], 'label': int, ...}`
(grain's random-access protocol). Which fields the pipeline transforms, and
how, is declared by the dataset's `DatasetInfo.fields` ({name: kind}; kinds
image, mask, boxes, class, and the per-box kinds box_class, box_flag and
box_mask; default image + a 'label' class, so 'label' is there only when
declared).
Besides the declared fields an example may carry extra fields of fixed shape and dtype (e.g. a text `embedding`); the pipeline
passes them through to the batches unchanged. A source names them in
`extra_fields` ({name: (shape, dtype)}), or they are read off its first
example. A source may name its examples for error messages with
`describe(index) -> str` (e.g. their files).

Embedded datasets ship with a Python package and need neither files nor
network. `digits` is scikit-learn's `load_digits`: 1,797 8x8 grayscale digits
with values 0..16, scaled here to uint8 0..255 (x * 255 / 16, rounded). Its
fixed split, the same on every machine and with no random numbers: within each
class (in the order load_digits returns it) the 36 examples at evenly spaced
ranks floor((i + 0.5) * n_class / 36), i = 0..35, form 'test' (360 = 36 x 10,
stratified); the other 1,437 form 'train', in their original order.

`digits_seg`, `digits_det` and `digits_inst` (`jaxcnn.data.canvas`) are embedded
too: canvases of those digits with per-pixel classes, boxes, or boxes with
instance masks (`register_embedded`).

Registered datasets live in files of the user's (a folder given as
`data.data_dir`); `register_source(info, open_split)` makes one usable as
`data.name`. `cub_stackgan` (CUB-200-2011 birds with the char-CNN-RNN text
embeddings of the StackGAN authors, `jaxcnn.data.embeddings`) is registered
this way; a project of one's own registers its dataset the same way before
building the config:

    def open_split(split, data_dir):          # split: a split name of info.splits
      return MySource(data_dir, split)        # len() and [i] -> {'image', 'label', ...}
    register_source(DatasetInfo('mine', 10, (64, 64, 3), False, 'train', 'test', None), open_split)

`voc2012_seg` (`jaxcnn.data.voc`) and `cityscapes` (`jaxcnn.data.cityscapes`) are
registered the same way.

All other datasets are TensorFlow Datasets, read through `tfds.data_source`
(ArrayRecord, no TensorFlow needed); see `jaxcnn.data.prepare` for how they get
prepared. Those whose examples are not (image, label), such as
`oxford_iiit_pet`'s trimaps (`jaxcnn.data.pets`) and the detection datasets
`voc2007_det`, `voc2012_det` (`jaxcnn.data.voc_det`) and `coco2017_det`
(`jaxcnn.data.coco`), are added with `register_tfds_dataset(info, convert)`.

A joined dataset's splits are concatenations of other datasets' splits
(`register_joined`): `voc0712_det`'s 'trainval' is VOC 2007 trainval followed
by VOC 2012 trainval, the training set of the SSD and YOLO papers.
"""
import dataclasses
import functools
import re
import threading
import types
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from jaxcnn.errors import UserError, unknown


# Kinds of example fields (`DatasetInfo.fields`); what the pipeline does with each is in pipeline.py's doc.
FIELD_KINDS = ("image", "mask", "boxes", "class", "box_class", "box_flag", "box_mask", "text")
SPATIAL_TARGET_KINDS = ("mask", "boxes", "box_mask")
# One value per box of the dataset's boxes field, in the same slots: a class (int32, 0..num_classes-1), a flag
# (bool, e.g. COCO's is_crowd, VOC's difficult) or a binary mask of the image's size (uint8 0/1 [H, W], the
# instance's pixels: Mask R-CNN's targets). Geometry never reorders slots, so they stay aligned.
PER_BOX_KINDS = ("box_class", "box_flag", "box_mask")
CLASSIFICATION_FIELDS = (("image", "image"), ("label", "class"))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the pipeline need to know about a dataset before reading it.

  `fields` declares the example fields the pipeline transforms and their kinds
  (a dict is accepted and kept as ((name, kind), ...) pairs, so the info stays
  hashable): 'image' (uint8 [H, W, C]; the field named 'image' is the only
  one), 'mask' (integer label map [H, W]: classes 0..num_classes-1 or
  `ignore_label`), 'boxes' (float [N, 4] xyxy in pixels, with an optional
  bool [N] validity field named '<name>_valid'; N may differ between
  examples: the pipeline pads to data.max_boxes), 'class' (an int label),
  'box_class' / 'box_flag' ([N] per box of the one boxes field: an int class /
  a bool), 'box_mask' ([N, H, W] 0/1 or bool per box of the boxes field: its
  instance's pixels in the image; moved by geometry like the image, resized
  by nearest neighbour, padded with 0), 'text' (an example's caption strings,
  tokenized by the pipeline into [max_captions, context_length] ids; see
  `jaxcnn.data.captions`). Other fields an example carries
  pass through unchanged (see `extra_field_specs`). `num_classes` counts the
  classes of the dataset's target: labels for classification, mask values
  (background included) for segmentation, object classes (no background) for
  detection.
  """
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]   # native (H, W, C); the output size when data.image_size is 0
  embedded: bool                      # True: ships with a package, needs no files
  train_split: str                    # default split names
  eval_split: str
  tfds_name: Optional[str]            # None for embedded datasets
  splits: Tuple[str, ...] = ("train", "test")   # every split name the dataset has
  fields: Any = CLASSIFICATION_FIELDS           # ((name, kind), ...) or {name: kind}
  ignore_label: int = 255                       # mask value that no loss or metric counts
  class_names: Tuple[str, ...] = ()             # optional, num_classes names
  max_boxes: int = 100                          # boxes slots per example when data.max_boxes is 0
  max_captions: int = 5                         # 'text' fields: caption slots when data.max_captions is 0
  frames: int = 0                               # > 0: a video dataset; its 'image' is a clip uint8 [T, H, W, C]
                                                # (image_shape per frame), T = data.frames or this default

  def __post_init__(self):
    pairs = tuple((str(k), str(v)) for k, v in (self.fields.items() if isinstance(self.fields, dict)
                                                else self.fields))
    object.__setattr__(self, "fields", pairs)
    object.__setattr__(self, "class_names", tuple(self.class_names))
    kinds = dict(pairs)
    if kinds.get("image") != "image" or list(kinds.values()).count("image") != 1:
      raise ValueError(f"dataset '{self.name}': want exactly one image field, named 'image', got fields {pairs}")
    unknown_kinds = sorted(set(kinds.values()) - set(FIELD_KINDS))
    if unknown_kinds:
      raise ValueError(f"dataset '{self.name}': unknown field kind(s) {unknown_kinds}; allowed: {FIELD_KINDS}")
    boxes = [k for k, v in pairs if v == "boxes"]
    if any(v in PER_BOX_KINDS for _, v in pairs) and len(boxes) != 1:
      raise ValueError(f"dataset '{self.name}': per-box fields need exactly one boxes field, got fields {pairs}")
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f"dataset '{self.name}': {len(self.class_names)} class names for {self.num_classes} classes")

  @property
  def field_kinds(self) -> Dict[str, str]:
    """{field name: kind} of the declared fields."""
    return dict(self.fields)

  @property
  def boxes_field(self) -> Optional[str]:
    """The name of the (first) boxes field, or None."""
    return next((k for k, v in self.fields if v == "boxes"), None)

  @property
  def spatial(self) -> bool:
    """Whether examples carry targets tied to pixel positions (masks, boxes): geometry moves them with the image."""
    return any(kind in SPATIAL_TARGET_KINDS for _, kind in self.fields)


_INFOS: Dict[str, DatasetInfo] = {i.name: i for i in [
    DatasetInfo("digits", 10, (8, 8, 1), True, "train", "test", None),
    DatasetInfo("mnist", 10, (28, 28, 1), False, "train", "test", "mnist"),
    DatasetInfo("fashion_mnist", 10, (28, 28, 1), False, "train", "test", "fashion_mnist"),
    DatasetInfo("kmnist", 10, (28, 28, 1), False, "train", "test", "kmnist"),
    DatasetInfo("cifar10", 10, (32, 32, 3), False, "train", "test", "cifar10"),
    DatasetInfo("cifar100", 100, (32, 32, 3), False, "train", "test", "cifar100"),
    DatasetInfo("svhn_cropped", 10, (32, 32, 3), False, "train", "test", "svhn_cropped",
                splits=("train", "test", "extra")),
]}

# Per-channel mean and std of the training split, in [0, 1] units (published values).
_KNOWN_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

DIGITS_TEST_PER_CLASS = 36

# tfds datasets whose examples are not (image, label): name -> convert(tfds example, index) -> example.
_TFDS_CONVERTERS: Dict[str, Callable[[dict, int], dict]] = {}

# Joined datasets: name -> {split: ((dataset name, split), ...)} read one after the other.
_JOINED: Dict[str, Dict[str, Tuple[Tuple[str, str], ...]]] = {}

# Registered datasets: name -> open_split(split name, data_dir) -> source.
SplitOpener = Callable[[str, str], Any]
_OPENERS: Dict[str, SplitOpener] = {}
_REGISTRY_LOCK = threading.Lock()


def register_source(info: DatasetInfo, open_split: SplitOpener, *,
                    stats: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None) -> None:
  """Makes a dataset read from the user's files available as `data.name = info.name`.

  Args:
    info: what the dataset is; `embedded` must be False and `tfds_name` None.
      `image_shape` is the size used when `data.image_size` is 0 (the pipeline
      resizes every image to it).
    open_split: `open_split(split, data_dir)` -> a random-access source of one
      whole split (`split` is one of `info.splits`; tfds-style slicing such as
      'train[:90%]' is applied on top). It should raise `UserError` naming the
      files it needs when they are missing. Each (split, data_dir) is opened
      once per process and shared, so the source must allow concurrent reads.
    stats: optional published per-channel (mean, std) in [0, 1] units for
      `data.normalize='standard'`; otherwise computed from the training split.

  Registering a name again replaces the earlier registration; tfds and
  embedded names cannot be taken.
  """
  if info.embedded or info.tfds_name is not None:
    raise ValueError(f"a registered dataset reads the user's files: want embedded=False and tfds_name=None, "
                     f"got {info}")
  with _REGISTRY_LOCK:
    if info.name in _INFOS and info.name not in _OPENERS:
      raise ValueError(f"dataset name '{info.name}' is taken by a built-in dataset")
    _INFOS[info.name] = info
    _OPENERS[info.name] = open_split
    if stats is not None:
      _KNOWN_STATS[info.name] = stats
    else:
      _KNOWN_STATS.pop(info.name, None)
  _open_registered.cache_clear()
  _computed_stats.cache_clear()


def register_tfds_dataset(info: DatasetInfo, convert: Callable[[dict, int], dict], *,
                          stats: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None) -> None:
  """A tfds dataset read through `tfds.data_source` whose examples `convert(example, index)` maps to ours."""
  if info.embedded or not info.tfds_name:
    raise ValueError(f"a tfds dataset needs embedded=False and a tfds_name, got {info}")
  with _REGISTRY_LOCK:
    _INFOS[info.name] = info
    _TFDS_CONVERTERS[info.name] = convert
    if stats is not None:
      _KNOWN_STATS[info.name] = stats


def register_joined(info: DatasetInfo, parts: Dict[str, Tuple[Tuple[str, str], ...]], *,
                    stats: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None) -> None:
  """A dataset whose split s is the examples of `parts[s]` = ((dataset, split), ...), in that order.

  The parts are read with the same data_dir / download / manual_dir, must have
  the joined dataset's fields, and keep their own example names in errors.
  """
  if info.embedded or info.tfds_name is not None or set(parts) != set(info.splits):
    raise ValueError(f"a joined dataset needs embedded=False, tfds_name=None and parts for exactly its splits "
                     f"{info.splits}, got {info} with parts for {sorted(parts)}")
  with _REGISTRY_LOCK:
    _INFOS[info.name] = info
    _JOINED[info.name] = {k: tuple(tuple(p) for p in v) for k, v in parts.items()}
    if stats is not None:
      _KNOWN_STATS[info.name] = stats


def joined_parts(name: str) -> Dict[str, Tuple[Tuple[str, str], ...]]:
  """{split: ((dataset, split), ...)} of a joined dataset; {} for the others."""
  return dict(_JOINED.get(name, {}))


def registered_names() -> list:
  """The datasets added with `register_source` (read from files the user provides)."""
  return sorted(_OPENERS)


def dataset_names() -> list:
  """Every dataset name `get_source` knows."""
  return sorted(_INFOS)


def embedded_names() -> list:
  """The datasets that need no files and no network."""
  return sorted(n for n, i in _INFOS.items() if i.embedded)


def dataset_info(name: str) -> DatasetInfo:
  """The `DatasetInfo` of a known dataset; UserError listing the known ones otherwise."""
  if name not in _INFOS:
    raise unknown("dataset", name, _INFOS)
  return _INFOS[name]


class ArraySource:
  """A split held in memory: uint8 images [N, H, W, C] (clips: [N, T, H, W, C]), integer labels [N] (or None:
  no 'label'), and optionally more per-example arrays ({name: [N, ...]}, e.g. segmentation masks)."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], name: str = "",
               arrays: Optional[Dict[str, np.ndarray]] = None):
    arrays = dict(arrays or {})
    if images.ndim not in (4, 5) or images.dtype != np.uint8 or (labels is not None and len(images) != len(labels)) \
        or any(len(a) != len(images) for a in arrays.values()):
      raise ValueError(f"want uint8 [N, H, W, C] images and N labels and N of every array, got {images.dtype} "
                       f"{images.shape}, {None if labels is None else len(labels)} labels and "
                       f"{ {k: np.shape(a) for k, a in arrays.items()} }")
    self.images, self.name, self.arrays = images, name, arrays
    self.labels = None if labels is None else np.asarray(labels, np.int64)
    self.extra_fields = {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index) -> dict:
    index = int(index)
    example = {"image": self.images[index]}
    if self.labels is not None:
      example["label"] = int(self.labels[index])
    for key, array in self.arrays.items():
      example[key] = array[index]
    return example

  def __repr__(self) -> str:
    return f"ArraySource({self.name!r}, {len(self)} x {self.images.shape[1:]})"


class TfdsSource:
  """A tfds random-access data source reduced to {'image': uint8 [H, W, C], 'label': int}.

  `convert(tfds example, index) -> example` replaces that reduction for datasets
  with other fields (see `register_tfds_dataset`).
  """
  extra_fields: Dict[str, Tuple[Tuple[int, ...], Any]] = {}

  def __init__(self, data_source, name: str = "", convert: Optional[Callable[[dict, int], dict]] = None):
    self.data_source, self.name, self.convert = data_source, name, convert

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index) -> dict:
    example = self.data_source[int(index)]
    if self.convert is not None:
      return self.convert(example, int(index))
    image = np.asarray(example["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": int(example["label"])}

  def describe(self, index: int) -> str:
    return f"example {index} of tfds {self.name}"

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, {len(self)} examples)"


def get_source(name: str, split: str, *, data_dir: Optional[str] = None, download: bool = False,
               manual_dir: Optional[str] = None):
  """Random access to one split of a dataset.

  Args:
    name: a name from `dataset_names()`.
    split: a split name ('train', 'test', ...), with tfds slicing if wanted
      ('train[:90%]', 'train[45000:]', 'train+test').
    data_dir: where tfds datasets are prepared; None or '' = tfds's default
      ($TFDS_DATA_DIR or ~/tensorflow_datasets). For a registered dataset: the
      folder with its files (passed to its `open_split`).
    download: a tfds dataset that is not prepared is downloaded and prepared
      (ArrayRecord) when its download host answers within a few seconds.
    manual_dir: a folder holding the dataset's downloaded archives (e.g.
      cifar-10-binary.tar.gz); preparing from it needs no network.

  Raises:
    UserError: unknown dataset or split, an empty split, or a tfds dataset that
      is not prepared and cannot be prepared here.
  """
  info = dataset_info(name)
  _check_split_names(info, split)
  if info.embedded:
    source = _embedded_source(info, split)
  elif info.name in _OPENERS:
    source = _registered_source(info, split, data_dir or "")
  elif info.name in _JOINED:
    source = _sliced_source(info, split, lambda part: IndexedSource(
        [(s, range(len(s))) for s in (get_source(n, p, data_dir=data_dir, download=download, manual_dir=manual_dir)
                                      for n, p in _JOINED[info.name][part])], name=f"{name}:{part}"))
  else:
    from jaxcnn.data import prepare  # pylint: disable=g-import-not-at-top  (keeps tfds off the digits path)
    data_source = prepare.tfds_data_source(info, split, data_dir=data_dir or None, download=download,
                                           manual_dir=manual_dir or None)
    source = TfdsSource(data_source, name=f"{name}:{split}", convert=_TFDS_CONVERTERS.get(name))
  if len(source) == 0:
    raise UserError(f"split '{split}' of dataset '{name}' is empty; choose a split with examples "
                    f"(splits: {', '.join(info.splits)})")
  return source


def _check_split_names(info: DatasetInfo, split) -> None:
  """Every '+'-joined part of `split` must start with one of the dataset's split names."""
  if not isinstance(split, str) or not split.strip():
    raise UserError(f"split of dataset '{info.name}' must be a non-empty string like 'train', "
                    f"got {split!r} (splits: {', '.join(info.splits)})")
  for part in split.split("+"):
    match = re.fullmatch(r"\s*([A-Za-z_][\w-]*)\s*(\[[^\]]*\])?\s*", part)
    if not match:
      raise UserError(f"cannot read split '{split}' of dataset '{info.name}'; write a split name with "
                      f"optional tfds slicing like 'train', 'train[:90%]' or 'train+test'")
    if match.group(1) not in info.splits:
      raise UserError(f"unknown split '{match.group(1)}' of dataset '{info.name}' "
                      f"(splits: {', '.join(info.splits)})")


def _embedded_source(info: DatasetInfo, split: str) -> ArraySource:
  """Resolves tfds-style slicing over the in-memory splits of an embedded dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  arrays = {k: _as_field_arrays(v) for k, v in _EMBEDDED_LOADERS[info.name]().items()}
  sizes = {k: types.SimpleNamespace(num_examples=len(v["image"])) for k, v in arrays.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
  except (ValueError, AssertionError) as err:
    raise UserError(f"cannot read split '{split}' of dataset '{info.name}': {err}") from None
  parts = [{k: a[i.from_:i.to] for k, a in arrays[i.splitname].items()} for i in instructions]
  joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  images, labels = joined.pop("image"), joined.pop("label", None)
  return ArraySource(images, labels, name=f"{info.name}:{split}", arrays=joined)


def _as_field_arrays(split_arrays) -> Dict[str, np.ndarray]:
  """An embedded loader's split, (images, labels) or {field: [N, ...]}, as {field: [N, ...]}."""
  if isinstance(split_arrays, dict):
    return split_arrays
  images, labels = split_arrays
  return {"image": images, "label": labels}


def register_embedded(info: DatasetInfo, load: Callable[[], Dict[str, Any]]) -> None:
  """An embedded dataset: `load()` -> {split: {field: array [N, ...]}} (or {split: (images, labels)}), cached
  by the loader itself; arrays should be read-only (sources of every thread share them)."""
  if not info.embedded or info.tfds_name is not None:
    raise ValueError(f"an embedded dataset needs embedded=True and tfds_name=None, got {info}")
  with _REGISTRY_LOCK:
    _INFOS[info.name] = info
    _EMBEDDED_LOADERS[info.name] = load


@functools.lru_cache(maxsize=16)
def _open_registered(name: str, split: str, data_dir: str):
  return _OPENERS[name](split, data_dir)


def _split_parts(split: str):
  """'train[:8]+test' -> ['train', 'test']: the split names a spec refers to (already checked)."""
  return [re.match(r"\s*([A-Za-z_][\w-]*)", part).group(1) for part in split.split("+")]


def _registered_source(info: DatasetInfo, split: str, data_dir: str):
  """A registered dataset's split, tfds-style slicing resolved into an index map over the opened splits."""
  return _sliced_source(info, split, lambda part: _open_registered(info.name, part, data_dir))


def _sliced_source(info: DatasetInfo, split: str, open_part: Callable[[str], Any]):
  """`split` ('a', 'a[:10]+b', ...) over whole splits `open_part(name)`: the part itself or an IndexedSource."""
  names = _split_parts(split)
  if len(names) == 1 and split.strip() == names[0]:
    return open_part(names[0])
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  opened = {n: open_part(n) for n in names}
  sizes = {n: types.SimpleNamespace(num_examples=len(s)) for n, s in opened.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
  except (ValueError, AssertionError) as err:
    raise UserError(f"cannot read split '{split}' of dataset '{info.name}': {err}") from None
  return IndexedSource([(opened[i.splitname], range(len(opened[i.splitname]))[i.from_:i.to]) for i in instructions],
                       name=f"{info.name}:{split}")


class IndexedSource:
  """Consecutive index ranges of other sources seen as one source (a sliced or joined split)."""

  def __init__(self, parts, name: str = ""):
    self.parts = [(source, indices) for source, indices in parts if len(indices)]
    self.offsets = np.cumsum([0] + [len(indices) for _, indices in self.parts])
    self.name = name
    fields = [extra_field_specs(source) for source, _ in self.parts]
    self.extra_fields = fields[0] if fields else {}

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, index) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    part = int(np.searchsorted(self.offsets, index, side="right")) - 1
    source, indices = self.parts[part]
    return source[indices[index - int(self.offsets[part])]]

  def describe(self, index: int) -> str:
    part = int(np.searchsorted(self.offsets, index, side="right")) - 1
    source, indices = self.parts[part]
    return describe_example(source, indices[index - int(self.offsets[part])])

  def __repr__(self) -> str:
    return f"IndexedSource({self.name!r}, {len(self)} examples)"


def describe_example(source, index: int) -> str:
  """What to call example `index` of `source` in an error: its file when the source says (`describe`)."""
  describe = getattr(source, "describe", None)
  if describe is not None:
    return describe(int(index))
  return f"example {int(index)} of {getattr(source, 'name', '') or type(source).__name__}"


def extra_field_specs(source) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
  """{name: (shape, dtype)} of the fields a source's examples carry besides 'image' and 'label'."""
  fields = getattr(source, "extra_fields", None)
  if fields is None:
    example = source[0] if len(source) else {}
    fields = {k: (np.shape(v), np.asarray(v).dtype) for k, v in example.items() if k not in ("image", "label")}
  return {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in fields.items()}


def digits_test_indices(labels: np.ndarray, per_class: int = DIGITS_TEST_PER_CLASS) -> np.ndarray:
  """Indices of the fixed stratified test split: `per_class` evenly spaced examples of each class."""
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    ranks = ((np.arange(per_class) + 0.5) * len(members) / per_class).astype(np.int64)
    chosen.append(members[ranks])
  return np.sort(np.concatenate(chosen))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """{'train': (images, labels), 'test': (...)} of sklearn's digits, images uint8 [N, 8, 8, 1]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  is_test = np.zeros(len(labels), bool)
  is_test[digits_test_indices(labels)] = True
  splits = {"train": (images[~is_test], labels[~is_test]), "test": (images[is_test], labels[is_test])}
  for pair in splits.values():
    for array in pair:
      array.setflags(write=False)   # shared by every source of this process
  return splits


digits_arrays = _digits_arrays   # public: the datasets built from the digits (canvas.py) start from these
_EMBEDDED_LOADERS = {"digits": _digits_arrays}


def channel_stats(name: str, *, data_dir: Optional[str] = None, download: bool = False,
                  manual_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) of the dataset's training split in [0, 1] units, float32 [C] each.

  Published values where known; otherwise computed once from (up to 10,000
  evenly spaced examples of) the training split and cached.
  """
  info = dataset_info(name)
  if name in _KNOWN_STATS:
    mean, std = _KNOWN_STATS[name]
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return _computed_stats(name, data_dir, download, manual_dir, info.train_split)


@functools.lru_cache(maxsize=16)
def _computed_stats(name, data_dir, download, manual_dir, split, max_examples=10_000):
  source = get_source(name, split, data_dir=data_dir, download=download, manual_dir=manual_dir)
  take = np.linspace(0, len(source) - 1, min(len(source), max_examples)).astype(np.int64)
  if isinstance(source, ArraySource):
    images = [source.images[take]]
  else:   # one image at a time: registered sources' images may differ in size
    images = (source[i]["image"] for i in take)
  total, total_sq, count = 0.0, 0.0, 0
  for image in images:
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float64) / 255.0
    total, total_sq, count = total + pixels.sum(0), total_sq + np.square(pixels).sum(0), count + len(pixels)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return mean.astype(np.float32), std.astype(np.float32)
