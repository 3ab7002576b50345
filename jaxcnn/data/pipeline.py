"""Grain pipelines: endless shuffled training batches and one padded pass for evaluation.

Determinism contract (training). With global batch size B, P processes and
local batch b = B / P, the global stream position of element k (0 <= k < B) of
step t is g = t * B + k. Position g shows slot s of the example stream: s = g
without repeated augmentation; with R = data.repeated_aug copies, the global
batch is R blocks of B / R (B must be divisible by R) and block r (k = r * B / R + j)
repeats slot s = t * B / R + j. Slot s is example permutation(seed, epoch)[s % N]
of epoch s // N (N = split size, one permutation per epoch from
np.random.default_rng([seed, epoch])). Element g is augmented with randomness
from np.random.default_rng([seed, 1, g]): uint8 augmentations in the listed
order, normalisation, then the normalised-image ones (erase), so the R copies
of an example are augmented differently. (With a leading `scale_crop`, images
read from files are resized to the larger load size instead of the output
size, and the crop brings them to the output size.) Process p yields elements
k = p * b .. p * b + b - 1. So the local batches of processes 0..P-1 at step t,
concatenated, are exactly the global batch a single process yields at step t:
same examples, same order, same augmentation, whatever the process count or the
number of reader threads. With R > 1 a pass over N positions shows N / R distinct
examples (DeiT's repeated-augmentation sampler keeps its epoch length the same way),
and with P = R processes each process holds one copy of every example of the batch.

Balanced sampling (data.sampler='balanced', datasets with a 'label'): the epoch's
order permutation(seed, epoch) is replaced by balanced(seed, epoch), N slots that
show each of the K classes present N // K times (N % K classes, drawn per epoch,
once more), then all N shuffled (both from np.random.default_rng([seed, epoch, 2])).
Class c's slots are the first ones of whole cycles over its examples, cycle q in
the order np.random.default_rng([seed, epoch, 2, c, q]).permutation: within an
epoch each example of a rare class is shown before any is shown again, and a
common class shows a random subset.
A rare class is so repeated and a common one subsampled within every epoch. It
is a function of (seed, epoch) alone, like the permutation, so every statement
above holds unchanged: the same batches whatever the process count, and resume
from the iterator state. The labels are read once, in order, when the iterator
is built (in-memory datasets: their label array).

Evaluation reads the split in order; global position g = t * B + k holds example
g, and positions past the end are padding with mask 0, so every process yields
the same number of equally shaped batches and each example appears once.

Extra fields. When the source's examples carry fields besides the image and the
label (`sources.extra_field_specs`, e.g. CUB's [10, 1024] text `embedding`),
every batch holds them too, stacked, unchanged and in the same positions as
their images (so the order and resume rules above hold for them as well);
padding positions of eval batches hold zeros.

Fields and batches. Examples are dicts; the dataset's `DatasetInfo.fields`
declares the fields the pipeline transforms, by kind, and `label` is there only
when the dataset declares it. With data.image_size = S or (H, W) (0: the
dataset's native shape), a local batch of b examples holds:
  image          float32 [b, H, W, C]  normalised as data.normalize says
  <class field>  int32 [b]             e.g. 'label' of classification datasets
  <mask field>   int32 [b, H, W]       e.g. 'segmentation': classes 0..K-1 or info.ignore_label
  <boxes field>  float32 [b, M, 4]     xyxy pixels of the output image, with '<name>_valid' bool [b, M]
  <per-box>      int32 / bool [b, M]   'box_class' fields (classes 0..K-1) / 'box_flag' fields, slot by slot
                                       with the boxes (e.g. 'box_classes', 'box_crowd', 'box_difficult')
  <box masks>    uint8 [b, M, H, W]    'box_mask' fields: slot m's instance mask (0/1) in the output image,
                                       zero in padding slots and outside the image (e.g. digits_inst's
                                       'box_masks')
  <text field>   int32 [b, K, L]       'text' fields (e.g. 'captions'): each caption's CLIP token ids (L =
                                       data.context_length; longer captions truncated as open_clip does, the
                                       last id the end-of-text token), K = data.max_captions slots (0: the
                                       dataset's max_captions): the example's captions in the first slots in
                                       order, those past K dropped, empty slots all zeros; slot 0 is a caption
                                       (an example without one is a UserError naming it)
  source_hw      int32 [b, 2]          datasets with boxes: (h, w) of each image as the source gave it
  extra fields   as the source gives them
  mask           float32 [b]           eval only: 1 for examples, 0 for padding positions
Video datasets (`DatasetInfo.frames` > 0, `jaxcnn.data.video`) have clips as their image: T =
data.frames frames (0: the dataset's default) sampled uniformly from each clip (`video.frame_indices`;
a clip with fewer frames is a UserError naming it), so `image` is float32 [b, T, H, W, C]; every
frame goes through the image steps above, and augmentation draws once per clip (the same crop and
flip on all its frames: `transforms.augment`).
`element_spec` gives these shapes without reading the data.

Boxes. M = data.max_boxes (0: the dataset's `max_boxes`). Where an example is
read its boxes are checked and padded (`detection.enter_boxes`): clipped to
the image, those left without area dropped with a counted warning, a class
out of range or more than M boxes a UserError naming the example; the kept
boxes fill the first slots in source order, the rest is padding (valid
False, zeros). Augmentation never reorders slots: a box a crop leaves without
area, or whose centre an iou_crop leaves out, is only marked invalid (its
coordinates and per-box values stay in the slot). So in every batch a slot's
box, validity and per-box values belong together, valid boxes have positive
area inside the output image, and invalid slots must be ignored whatever they
hold. An image without boxes is a valid example (all padding). Box masks
enter with their boxes (one 0/1 mask of the image's size per box, else a
UserError naming the example; dropped with a dropped box) and every
geometric step moves them as the image (nearest-neighbour resampling,
padding and canvas 0).

Two layouts. Datasets without masks or boxes (classification) resize every
image to H x W first and apply the image-only augmentations of data.augment
(crop = pad data.crop_padding and crop back, flip, randaugment, ...), as above.
Datasets with masks or boxes (`DatasetInfo.spatial`: digits_seg, digits_det,
VOC, COCO, Cityscapes, pets) read each image at its own size and apply the
augmentations of data.augment in the listed order, each geometric one moving
the image and every mask and box together (`geometry`): scale (factor ~
U(data.scale_range), of the image's own size, or with data.scale_base > 0 of
a shorter side of data.scale_base; one uniform drawn), crop (a random H x W
window after padding the bottom/right up to H x W, image with 0, masks with
the ignore label; two integers drawn), flip (one uniform), zoom_out (SSD: a
canvas up to data.zoom_out_range times the image filled with the dataset's
mean colour, with probability 1/2), iou_crop (SSD's minimum-IoU crop; boxes
needed), and photometric (SSD's colour distortion, image only). Image-only
geometric ops (randaugment, autoaugment, scale_crop) are refused there; erase
acts on the image only. The example is then brought to H x W as data.resize
says: 'fit' (default) resizes it keeping its aspect ratio so that it fits
(the factor min(H / h, W / w), and at most data.resize_shorter / min(h, w)
when that is set: torchvision's min_size / max_size rule; nothing happens
when it already is H x W, as after a crop) and pads the bottom/right, image
with 0 and masks with the ignore label; 'stretch' resizes it to exactly
H x W ignoring the aspect ratio (SSD's 300 x 300). Evaluation does only this,
so eval batches have a fixed shape, every pixel of the image is seen, and the
padding is ignored by every metric since its mask value is the ignore label;
scores are computed at the output resolution (not resized back to each
image's original size: boxes map back through 'source_hw' and
`geometry.fitted_size`, or H / h and W / w for 'stretch'). Eval padding
positions hold masks full of the ignore label and no valid box. Every mask read is
checked: the image's size, and values that are classes or the ignore label,
else a UserError naming the example (its file where the source knows it).
"""
import functools
import threading

import grain
import numpy as np

from jaxcnn.data import config as config_lib
from jaxcnn.data import detection, geometry, sources, transforms, video
from jaxcnn.errors import UserError

# Steps a training iterator can run: far beyond any training, small enough for grain's index arithmetic.
_ENDLESS_BATCHES = 2**40
# Batches of datasets with boxes carry the source image's (height, width) under this name.
SOURCE_HW = "source_hw"


def local_batch_size(global_batch_size, process_index: int, process_count: int) -> int:
  """B / P, with UserErrors for impossible combinations."""
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) \
      or global_batch_size < 1:
    raise UserError(f"global batch size must be a positive integer, got {global_batch_size!r}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise UserError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
  if global_batch_size % process_count:
    raise UserError(f"global batch size {global_batch_size} must be divisible by the number of processes "
                    f"{process_count}")
  return int(global_batch_size) // process_count


def global_position(local_index: int, local_batch: int, global_batch: int, process_index: int) -> int:
  """Global stream position of this process's `local_index`-th element (see the module doc)."""
  step, j = divmod(local_index, local_batch)
  return step * global_batch + process_index * local_batch + j


def example_slot(g: int, global_batch: int, repeats: int) -> int:
  """Slot of the example stream that global position `g` shows (see the module doc)."""
  if repeats == 1:
    return g
  step, k = divmod(g, global_batch)
  per_block = global_batch // repeats
  return step * per_block + k % per_block


class _EpochPermutations:
  """permutation(seed, epoch) of range(n), keeping the last few epochs (reader threads share it)."""

  def __init__(self, seed: int, n: int, keep: int = 3):
    self.seed, self.n, self.keep = seed, n, keep
    self._cache = {}
    self._lock = threading.Lock()

  def _make(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)

  def __call__(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._cache.get(epoch)
    if perm is None:
      perm = self._make(epoch)
      with self._lock:
        self._cache[epoch] = perm
        for old in sorted(self._cache)[:-self.keep]:
          del self._cache[old]
    return perm


class _BalancedEpochs(_EpochPermutations):
  """balanced(seed, epoch) of the module doc: a class-balanced order of the N examples with `labels`."""

  def __init__(self, seed: int, labels: np.ndarray, keep: int = 3):
    super().__init__(seed, len(labels), keep)
    labels = np.asarray(labels)
    self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]

  def _make(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch, 2])
    k = len(self.members)
    counts = np.full(k, self.n // k)
    counts[rng.permutation(k)[:self.n % k]] += 1
    slots = []
    for c, (members, count) in enumerate(zip(self.members, counts)):
      # Whole cycles over the class's examples, each in its own random order: within the epoch every example
      # of a rare class is shown before any is shown again; a common class shows a random subset.
      cycles = [np.random.default_rng([self.seed, epoch, 2, c, q]).permutation(members)
                for q in range(-(-count // len(members)))]
      slots.append(np.concatenate(cycles)[:count])
    return rng.permutation(np.concatenate(slots))


def _labels_of(examples) -> np.ndarray:
  """The 'label' of every example of a split, in order (an in-memory source's array; else one read each)."""
  source = examples.source
  if isinstance(source, sources.ArraySource) and source.labels is not None:
    return source.labels
  return np.asarray([int(source[i]["label"]) for i in range(len(source))], np.int64)


class _Examples:
  """One split of a DataSpec: examples read (uint8 image at the read size, targets), then finished (normalised
  float32 image, int32 labels and masks, extra fields unchanged). See the module doc for the two layouts."""

  def __init__(self, spec: config_lib.DataSpec, split: str, train: bool = False):
    self.spec = spec
    self.kinds = spec.info.field_kinds
    self.class_fields = [n for n, k in self.kinds.items() if k == "class"]
    self.mask_fields = [n for n, k in self.kinds.items() if k == "mask"]
    self.box_fields = [n for n, k in self.kinds.items() if k == "boxes"]
    self.text_fields = [n for n, k in self.kinds.items() if k == "text"]
    self.per_box = {n: k for n, k in self.kinds.items() if k in sources.PER_BOX_KINDS}
    self.source = _resized_source(spec, split)
    self.needs_resize = not spec.spatial and not isinstance(self.source, sources.ArraySource)
    # A leading scale_crop crops the output from a larger image: read it at that size (one resampling).
    self.read_size = spec.image_hw
    if train and spec.augment[:1] == ("scale_crop",):
      self.read_size = spec.augment_options.scale_crop_load
    field_specs = sources.extra_field_specs(self.source)
    made_here = {f"{n}_valid" for n in self.box_fields} | ({SOURCE_HW} if self.box_fields else set())
    self.extra_fields = {k: v for k, v in field_specs.items() if k not in self.kinds and k not in made_here}
    m = spec.max_boxes
    self.box_specs = {}
    for name in self.box_fields:
      self.box_specs[name] = ((m, 4), np.dtype(np.float32))
      self.box_specs[f"{name}_valid"] = ((m,), np.dtype(np.bool_))
    for name, kind in self.per_box.items():
      shape = (m,) + (tuple(spec.image_hw) if kind == "box_mask" else ())
      self.box_specs[name] = (shape, np.dtype(detection.PER_BOX_DTYPES[kind]))
    if self.box_fields:
      self.box_specs[SOURCE_HW] = ((2,), np.dtype(np.int32))
    for name in self.text_fields:
      self.box_specs[name] = ((spec.max_captions, spec.context_length), np.dtype(np.int32))
    self.dropped = detection.DroppedBoxes(spec.name)
    if spec.frames:
      video.check_clip_lengths(self.source, spec.frames, self._what)
    self._mean_std = None
    self._fill = None

  def __len__(self) -> int:
    return len(self.source)

  @property
  def mean_std(self):
    if self._mean_std is None:
      self._mean_std = self.spec.mean_std()
    return self._mean_std

  @property
  def fill(self) -> np.ndarray:
    """zoom_out's canvas colour: the dataset's mean in uint8, per channel (torchvision's SSD recipe fills with
    ImageNet's mean, which the VOC and COCO datasets here use as theirs)."""
    if self._fill is None:
      mean = self.spec.dataset_mean_std()[0]
      self._fill = np.clip(np.rint(np.asarray(mean, np.float64) * 255), 0, 255).astype(np.uint8)
    return self._fill

  def _what(self, index: int) -> str:
    return f"{sources.describe_example(self.source, index)} (dataset '{self.spec.name}')"

  def read(self, index: int) -> dict:
    """Example `index` with its uint8 image at the spec's (read) size and channels; every field checked."""
    if self.spec.frames:   # a clip: data.frames of its frames, sampled uniformly (too few: a UserError)
      example = video.read_clip(self.source, index, self.spec.frames, self._what(index))
    else:
      example = self.source[index]
    image = example["image"]
    if self.needs_resize:
      image = transforms.resize(image, self.read_size)
    out = {"image": transforms.to_channels(image, self.spec.channels)}
    for name in self.class_fields:
      out[name] = example[name]
    for name in self.mask_fields:
      out[name] = self._checked_mask(example[name], image.shape[:2], name, index)
    for i, name in enumerate(self.box_fields):
      per_box = self.per_box if i == 0 else {}
      missing = [n for n in per_box if n not in example]
      if missing:
        raise UserError(f"{self._what(index)} lacks the per-box field(s) {missing} that the dataset declares")
      out[name], out[f"{name}_valid"], columns = detection.enter_boxes(
          example[name], example.get(f"{name}_valid"), {n: (k, example[n]) for n, k in per_box.items()},
          image.shape[:2], self.spec.info.num_classes, self.spec.max_boxes, self._what(index), self.dropped)
      out.update(columns)
    if self.box_fields:
      out[SOURCE_HW] = np.array(image.shape[:2], np.int32)
    for name in self.text_fields:
      out[name] = self._tokens(example[name], name, index)
    for name, field_spec in self.extra_fields.items():
      out[name] = self._checked(example[name], name, field_spec, index)
    return out

  def _checked(self, value, name: str, field_spec, index: int) -> np.ndarray:
    shape, dtype = field_spec
    value = np.asarray(value, dtype)
    if value.shape != shape:
      raise UserError(f"{self._what(index)} has field '{name}' of shape {value.shape}, the others {shape}: "
                      f"every example's fields must have one shape")
    return value

  def _tokens(self, captions, name: str, index: int) -> np.ndarray:
    """An example's captions as int32 [K, L] token ids (see the module doc)."""
    if isinstance(captions, (str, bytes)):
      captions = [captions]
    texts = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.asarray(captions, object).ravel()]
    texts = [t for t in texts if t.strip()]
    if not texts:
      raise UserError(f"{self._what(index)} has no caption in its '{name}' field; every image needs at least one")
    out = np.zeros((self.spec.max_captions, self.spec.context_length), np.int32)
    for k, text in enumerate(texts[:self.spec.max_captions]):
      out[k] = _token_ids(text, self.spec.context_length)
    return out

  def _checked_mask(self, mask, image_hw, name: str, index: int) -> np.ndarray:
    """[H, W] (uint8 or int32): the image's size, every value a class or the ignore label (else a UserError)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
      mask = mask[..., 0]
    if mask.shape != tuple(image_hw):
      raise UserError(f"{self._what(index)}: the image is {image_hw[0]}x{image_hw[1]} but its '{name}' mask is "
                      f"{'x'.join(map(str, mask.shape))}; an image and its mask must have the same size")
    info = self.spec.info
    if not np.issubdtype(mask.dtype, np.integer):
      raise UserError(f"{self._what(index)}: '{name}' mask has {mask.dtype} values; want integer class indices")
    if mask.dtype != np.uint8 or info.ignore_label > 255:   # uint8 stays: 4x less to resample
      mask = mask.astype(np.int32)
    bad = ((mask < 0) | (mask >= info.num_classes)) & (mask != info.ignore_label)
    if bad.any():
      value = int(mask[bad][0])
      raise UserError(f"{self._what(index)}: '{name}' mask holds value {value}; allowed: the classes "
                      f"0..{info.num_classes - 1} and the ignore label {info.ignore_label}")
    return mask

  def augment(self, example: dict, rng: np.random.Generator, names) -> dict:
    """The uint8-stage augmentations, in order: image-only ops, or on spatial datasets the geometric ones."""
    options = self.spec.augment_options
    if not self.spec.spatial:
      return {**example, "image": transforms.augment(example["image"], rng, names, options)}
    ignore = self.spec.info.ignore_label
    for name in names:
      if name == "scale":
        example = geometry.random_scale(example, self.kinds, rng, options.scale_range, options.scale_base)
      elif name == "crop":
        example = geometry.random_crop(example, self.kinds, rng, self.spec.image_hw, ignore)
      elif name == "flip":
        example = geometry.random_flip(example, self.kinds, rng)
      elif name == "zoom_out":
        example = geometry.zoom_out(example, self.kinds, rng, self.fill, ignore, options.zoom_out_range)
      elif name == "iou_crop":
        example = geometry.iou_crop(example, self.kinds, rng)
      elif name == "photometric":
        example = {**example, "image": transforms.photometric_distort(example["image"], rng)}
      else:
        raise ValueError(f"no geometric augmentation '{name}'")   # config.resolve admits only the above
    return example

  def finish(self, example: dict) -> dict:
    """The batch element: spatial examples fitted into the output size first (identity if they are at it)."""
    if self.spec.spatial and self.spec.resize == "stretch":
      example = geometry.resize(example, self.kinds, self.spec.image_hw)
    elif self.spec.spatial:
      example = geometry.fit(example, self.kinds, self.spec.image_hw, self.spec.info.ignore_label,
                             self.spec.resize_shorter)
    if self.box_fields:   # float rounding of the resize must not put a box edge past the image
      h, w = self.spec.image_hw
      example = {**example, **{n: np.clip(example[n], 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
                               for n in self.box_fields}}
    mean, std = self.mean_std
    out = {"image": transforms.normalize(example["image"], mean, std)}
    for name, value in example.items():
      if name == "image":
        continue
      if name in self.class_fields:
        out[name] = np.int32(value)
      elif name in self.mask_fields:
        out[name] = np.ascontiguousarray(value, np.int32)
      elif self.per_box.get(name) == "box_mask":
        out[name] = np.ascontiguousarray(value, np.uint8)
      else:
        out[name] = value
    return out

  def padding(self) -> dict:
    """What an eval padding position holds: zeros of every field's shape, masks full of the ignore label."""
    out = {"image": np.zeros(self.spec.image_shape, np.float32)}
    for name in self.class_fields:
      out[name] = np.int32(0)
    for name in self.mask_fields:
      out[name] = np.full(self.spec.image_hw, self.spec.info.ignore_label, np.int32)
    for name, (shape, dtype) in {**self.box_specs, **self.extra_fields}.items():
      out[name] = np.zeros(shape, dtype)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _token_ids(text: str, context_length: int) -> np.ndarray:
  """CLIP token ids of one caption, cached: template-made captions repeat, and tokenizing costs ~50 us each."""
  from jaxcnn.data import tokenizer  # pylint: disable=g-import-not-at-top
  ids = tokenizer.tokenize([text], context_length)[0]
  ids.setflags(write=False)
  return ids


def _resized_source(spec: config_lib.DataSpec, split: str):
  """Embedded classification splits are resized once as a whole; tfds ones per example as they are read;
  spatial datasets' examples stay at their own size until the geometric pipeline."""
  if spec.info.embedded and not spec.spatial:
    return _resized_embedded(spec.name, split, spec.image_hw)
  return spec.source(split)


@functools.lru_cache(maxsize=8)
def _resized_embedded(name: str, split: str, size) -> sources.ArraySource:
  source = sources.get_source(name, split)
  images = transforms.resize_batch(source.images, size)
  images.setflags(write=False)
  return sources.ArraySource(images, source.labels, name=f"{source.name}@{size}", arrays=source.arrays)


def _read_options(spec: config_lib.DataSpec) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=spec.num_threads, prefetch_buffer_size=spec.prefetch)


def train_iterator(data_cfg, *, global_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1):
  """Endless local training batches {'image': float32 [b, S, S, C], 'label': int32 [b], extra fields [b, ...]}.

  Returns grain's DatasetIterator: `.get_state()` is a JSON-serialisable dict
  and `.set_state(state)` on a freshly built iterator (same config, seed and
  batch size) continues exactly where the saved one was.
  """
  spec = config_lib.resolve(data_cfg)
  local = local_batch_size(global_batch_size, process_index, process_count)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserError(f"data seed must be a non-negative integer, got {seed!r}")
  seed, global_batch, repeats = int(seed), int(global_batch_size), spec.repeated_aug
  if global_batch % repeats:
    raise UserError(f"global batch size {global_batch} must be divisible by data.repeated_aug={repeats}")
  examples = _Examples(spec, spec.train_split, train=True)
  n = len(examples)
  permutations = (_BalancedEpochs(seed, _labels_of(examples)) if spec.sampler == "balanced"
                  else _EpochPermutations(seed, n))
  uint8_augment, normalized_augment = transforms.split_augment(spec.augment)
  options = spec.augment_options

  def element(local_index):
    g = global_position(int(local_index), local, global_batch, process_index)
    epoch, offset = divmod(example_slot(g, global_batch, repeats), n)
    example = examples.read(permutations(epoch)[offset])
    if not spec.augment:   # seeding costs as much as a crop: only when something random follows
      return examples.finish(example)
    rng = np.random.default_rng([seed, 1, g])
    out = examples.finish(examples.augment(example, rng, uint8_augment))
    if normalized_augment:
      out["image"] = transforms.augment(out["image"], rng, normalized_augment, options)
    return out

  dataset = grain.MapDataset.range(_ENDLESS_BATCHES * local).map(element).batch(local, drop_remainder=True)
  return iter(dataset.to_iter_dataset(_read_options(spec)))


class EvalBatches:
  """One pass over an eval split in local batches {'image', 'label', extra fields, 'mask'}; every `iter()` starts
  afresh."""

  def __init__(self, spec: config_lib.DataSpec, split: str, global_batch_size: int, process_index: int,
               process_count: int):
    self.spec, self.split = spec, split
    self.local_batch = local_batch_size(global_batch_size, process_index, process_count)
    self.global_batch, self.process_index = int(global_batch_size), process_index
    self.examples = _Examples(spec, split)
    self.num_examples = len(self.examples)
    self.num_batches = -(-self.num_examples // self.global_batch)

  def __len__(self) -> int:
    return self.num_batches

  def _element(self, local_index):
    g = global_position(int(local_index), self.local_batch, self.global_batch, self.process_index)
    if g < self.num_examples:
      return {**self.examples.finish(self.examples.read(g)), "mask": np.float32(1.0)}
    return {**self.examples.padding(), "mask": np.float32(0.0)}

  def __iter__(self):
    dataset = grain.MapDataset.range(self.num_batches * self.local_batch).map(self._element)
    dataset = dataset.batch(self.local_batch, drop_remainder=True)
    return iter(dataset.to_iter_dataset(_read_options(self.spec)))


def eval_iterator(data_cfg, split=None, *, global_batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> EvalBatches:
  """Re-iterable single pass over `split` (default: data.eval_split or the dataset's), no augmentation."""
  spec = config_lib.resolve(data_cfg)
  return EvalBatches(spec, split or spec.eval_split, global_batch_size, process_index, process_count)


def element_spec(data_cfg, global_batch_size: int, process_index: int = 0, process_count: int = 1) -> dict:
  """{field: jax.ShapeDtypeStruct} of this process's training batches (`train_iterator`'s), for initialising.

  Built from the eval padding example's shapes (the same fields, shapes and
  dtypes as a training batch, without eval's 'mask'), so at most the split's
  first example is read (to learn the shapes of undeclared extra fields) and
  no dataset statistics are computed.
  """
  import jax  # pylint: disable=g-import-not-at-top
  spec = config_lib.resolve(data_cfg)
  local = local_batch_size(global_batch_size, process_index, process_count)
  padding = _Examples(spec, spec.train_split, train=True).padding()
  return {k: jax.ShapeDtypeStruct((local,) + np.shape(v), np.asarray(v).dtype) for k, v in padding.items()}
