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

Evaluation reads the split in order; global position g = t * B + k holds example
g, and positions past the end are padding with mask 0, so every process yields
the same number of equally shaped batches and each example appears once.

Extra fields. When the source's examples carry fields besides the image and the
label (`sources.extra_field_specs`, e.g. CUB's [10, 1024] text `embedding`),
every batch holds them too, stacked, unchanged and in the same positions as
their images (so the order and resume rules above hold for them as well);
padding positions of eval batches hold zeros.
"""
import functools
import threading
from typing import Dict, Tuple

import grain
import numpy as np

from jaxcnn.data import config as config_lib
from jaxcnn.data import sources, transforms
from jaxcnn.errors import UserError

# Steps a training iterator can run: far beyond any training, small enough for grain's index arithmetic.
_ENDLESS_BATCHES = 2**40


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

  def __call__(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._cache.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      with self._lock:
        self._cache[epoch] = perm
        for old in sorted(self._cache)[:-self.keep]:
          del self._cache[old]
    return perm


class _Examples:
  """One split of a DataSpec: images resized and channel-converted (uint8), then normalised (float32).

  Extra fields of the source's examples ride along unchanged (`extra_fields`: {name: (shape, dtype)}).
  """

  def __init__(self, spec: config_lib.DataSpec, split: str, train: bool = False):
    self.spec = spec
    self.source = _resized_source(spec, split)
    self.needs_resize = not isinstance(self.source, sources.ArraySource)
    # A leading scale_crop crops the output from a larger image: read it at that size (one resampling).
    self.read_size = spec.image_size
    if train and spec.augment[:1] == ("scale_crop",):
      self.read_size = spec.augment_options.scale_crop_load
    self.mean, self.std = spec.mean_std()
    self.extra_fields = sources.extra_field_specs(self.source)

  def __len__(self) -> int:
    return len(self.source)

  def read(self, index: int) -> Tuple[np.ndarray, int, Dict[str, np.ndarray]]:
    """(uint8 image at the spec's (read) size and channels, label, extra fields) of example `index`."""
    example = self.source[index]
    image = example["image"]
    if self.needs_resize:
      image = transforms.resize(image, self.read_size)
    extras = {}
    for name, (shape, dtype) in self.extra_fields.items():
      value = np.asarray(example[name], dtype)
      if value.shape != shape:
        raise UserError(f"example {index} of dataset '{self.spec.name}' has field '{name}' of shape "
                        f"{value.shape}, the others {shape}: every example's fields must have one shape")
      extras[name] = value
    return transforms.to_channels(image, self.spec.channels), example["label"], extras

  def finish(self, image: np.ndarray, label: int, extras: Dict[str, np.ndarray]) -> dict:
    return {"image": transforms.normalize(image, self.mean, self.std), "label": np.int32(label), **extras}

  def padding(self) -> dict:
    """What an eval padding position holds: zeros of every field's shape."""
    extras = {name: np.zeros(shape, dtype) for name, (shape, dtype) in self.extra_fields.items()}
    return {"image": np.zeros(self.spec.image_shape, np.float32), "label": np.int32(0), **extras}


def _resized_source(spec: config_lib.DataSpec, split: str):
  """Embedded splits are resized once as a whole; tfds ones per example as they are read."""
  if spec.info.embedded:
    return _resized_embedded(spec.name, split, spec.image_size)
  return spec.source(split)


@functools.lru_cache(maxsize=8)
def _resized_embedded(name: str, split: str, size: int) -> sources.ArraySource:
  source = sources.get_source(name, split)
  images = transforms.resize_batch(source.images, size)
  images.setflags(write=False)
  return sources.ArraySource(images, source.labels, name=f"{source.name}@{size}")


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
  permutations = _EpochPermutations(seed, n)
  uint8_augment, normalized_augment = transforms.split_augment(spec.augment)
  options = spec.augment_options

  def element(local_index):
    g = global_position(int(local_index), local, global_batch, process_index)
    epoch, offset = divmod(example_slot(g, global_batch, repeats), n)
    image, label, extras = examples.read(permutations(epoch)[offset])
    if not spec.augment:   # seeding costs as much as a crop: only when something random follows
      return examples.finish(image, label, extras)
    rng = np.random.default_rng([seed, 1, g])
    out = examples.finish(transforms.augment(image, rng, uint8_augment, options), label, extras)
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
      return {**self.examples.finish(*self.examples.read(g)), "mask": np.float32(1.0)}
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
