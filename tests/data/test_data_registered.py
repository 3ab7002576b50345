"""Registered (user-file) datasets: registration by name, extra per-example fields through the pipelines."""
import json

import chex
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.data import sources, transforms
from jaxcnn.errors import UserError

SIZES = {"train": 30, "test": 7}


class ToySource:
  """Example i: a constant image of value 3 * i (sizes vary), label i % 4, embedding [i, -i, i / 2] x 2 captions."""

  def __init__(self, split, data_dir):
    self.n = SIZES[split]
    self.offset = 0 if split == "train" else 100
    self.data_dir = data_dir

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.n:
      raise IndexError(index)
    i = index + self.offset
    image = np.full((10 + index % 3, 12, 3), (3 * i) % 256, np.uint8)
    embedding = np.array([[i, -i, i / 2]] * 2, np.float32)
    return {"image": image, "label": i % 4, "embedding": embedding}


@pytest.fixture
def toy():
  """Registers 'toy_fields' for one test and removes it afterwards."""
  opened = []

  def open_split(split, data_dir):
    if not data_dir:
      raise UserError("toy_fields needs data.data_dir")
    opened.append((split, data_dir))
    return ToySource(split, data_dir)

  info = data.DatasetInfo("toy_fields", 4, (8, 8, 3), False, "train", "test", None)
  data.register_source(info, open_split)
  yield opened
  for table in (sources._INFOS, sources._OPENERS):
    table.pop("toy_fields", None)
  sources._open_registered.cache_clear()


def _cfg(**overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name="toy_fields", data_dir="/toy", normalize="unit", augment="flip", num_threads=2))
  cfg.update(overrides)
  return cfg


def _index_of(batch):
  """The example index each position shows, read from its embedding; checked against image and label."""
  index = batch["embedding"][:, 0, 0].astype(np.int64)
  np.testing.assert_array_equal(batch["embedding"][:, 1], batch["embedding"][:, 0])
  np.testing.assert_array_equal(batch["label"], index % 4)
  np.testing.assert_allclose(batch["image"].reshape(len(index), -1).mean(1) * 255, (3 * index) % 256, atol=1e-3)
  return index


def _take(iterator, steps):
  return [next(iterator) for _ in range(steps)]


def test_registered_name_is_known_and_opened_once(toy):
  assert "toy_fields" in data.dataset_names() and "toy_fields" in data.registered_names()
  assert "toy_fields" not in data.embedded_names()
  assert "cub_stackgan" in data.registered_names()
  a = data.get_source("toy_fields", "train", data_dir="/toy")
  b = data.get_source("toy_fields", "train", data_dir="/toy")
  assert a is b and toy == [("train", "/toy")]
  assert data.extra_field_specs(a) == {"embedding": ((2, 3), np.dtype(np.float32))}
  with pytest.raises(UserError, match="needs data.data_dir"):
    data.get_source("toy_fields", "train")
  with pytest.raises(UserError, match="unknown split 'val'"):
    data.get_source("toy_fields", "val", data_dir="/toy")
  with pytest.raises(ValueError, match="taken by a built-in"):
    data.register_source(data.DatasetInfo("cifar10", 10, (32, 32, 3), False, "train", "test", None), ToySource)


def test_slicing_and_joining_registered_splits(toy):
  part = data.get_source("toy_fields", "train[5:8]+test[:2]", data_dir="/toy")
  assert len(part) == 5
  assert [int(part[i]["embedding"][0, 0]) for i in range(5)] == [5, 6, 7, 100, 101]
  assert data.extra_field_specs(part) == {"embedding": ((2, 3), np.dtype(np.float32))}
  with pytest.raises(IndexError):
    part[5]


def test_train_batches_carry_the_fields_of_their_examples(toy):
  batches = _take(data.train_iterator(_cfg(), global_batch_size=8, seed=3), 8)   # 64 positions: 2+ epochs
  chex.assert_shape(batches[0]["embedding"], (8, 2, 3))
  assert batches[0]["embedding"].dtype == np.float32 and batches[0]["image"].shape == (8, 8, 8, 3)
  seen = np.concatenate([_index_of(b) for b in batches])
  # The documented stream: position g shows permutation(seed, g // N)[g % N].
  n = SIZES["train"]
  expected = [np.random.default_rng([3, g // n]).permutation(n)[g % n] for g in range(64)]
  np.testing.assert_array_equal(seen, expected)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_with_fields_concatenate_to_the_single_process_batches(toy, process_count):
  whole = _take(data.train_iterator(_cfg(), global_batch_size=8, seed=1), 5)
  shards = [_take(data.train_iterator(_cfg(), global_batch_size=8, seed=1, process_index=p,
                                      process_count=process_count), 5) for p in range(process_count)]
  for t in range(5):
    joined = {k: np.concatenate([s[t][k] for s in shards]) for k in whole[t]}
    chex.assert_trees_all_equal(joined, whole[t])


def test_resume_restores_fields_exactly(toy):
  it = data.train_iterator(_cfg(), global_batch_size=8, seed=2)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 5)
  resumed = data.train_iterator(_cfg(), global_batch_size=8, seed=2)
  resumed.set_state(state)
  chex.assert_trees_all_equal(_take(resumed, 5), expected)


def test_eval_batches_carry_fields_and_pad_with_zeros(toy):
  batches = list(data.eval_iterator(_cfg(), global_batch_size=4))
  assert len(batches) == 2                   # 7 test examples, the last position is padding
  joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  np.testing.assert_array_equal(joined["mask"], [1] * 7 + [0])
  np.testing.assert_array_equal(_index_of({k: v[:7] for k, v in joined.items()}), np.arange(100, 107))
  np.testing.assert_array_equal(joined["embedding"][7], np.zeros((2, 3)))
  shards = [list(data.eval_iterator(_cfg(), global_batch_size=4, process_index=p, process_count=2))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([s[0]["embedding"] for s in shards]), batches[0]["embedding"])


def test_standard_normalisation_computes_stats_over_images_of_different_sizes(toy):
  mean, std = data.channel_stats("toy_fields", data_dir="/toy")
  values, weights = [], []
  for i in range(SIZES["train"]):
    values.append(3 * i / 255)
    weights.append((10 + i % 3) * 12)
  expected_mean = np.average(values, weights=weights)
  expected_std = np.sqrt(np.average((np.array(values) - expected_mean) ** 2, weights=weights))
  np.testing.assert_allclose(mean, [expected_mean] * 3, rtol=1e-5)
  np.testing.assert_allclose(std, [expected_std] * 3, rtol=1e-4)


class PatternSource:
  """Random uint8 images of varied sizes (example i from default_rng(i)), so crops and resizes are visible."""

  def __init__(self, split, data_dir):
    self.n = SIZES[split]

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    index = int(index)
    rng = np.random.default_rng(index)
    return {"image": rng.integers(0, 256, (20 + index % 5, 24, 3), dtype=np.uint8), "label": index % 4}


@pytest.fixture
def patterns():
  data.register_source(data.DatasetInfo("toy_patterns", 4, (16, 16, 3), False, "train", "test", None),
                       PatternSource)
  yield
  for table in (sources._INFOS, sources._OPENERS):
    table.pop("toy_patterns", None)
  sources._open_registered.cache_clear()


def test_scale_crop_reads_at_the_load_size_and_crops_back(patterns):
  """StackGAN's augmentation: one bilinear resize to int(S * 76 / 64), a uniform random S x S crop, then flip."""
  seed, size = 4, 16
  cfg = _cfg(name="toy_patterns", image_size=size, augment="scale_crop,flip")
  batches = _take(data.train_iterator(cfg, global_batch_size=6, seed=seed), 2)
  load = int(size * 76 / 64)
  assert load == 19
  offsets = set()
  for t, batch in enumerate(batches):
    for k in range(6):
      g = t * 6 + k
      index = np.random.default_rng([seed, 0]).permutation(SIZES["train"])[g]
      rng = np.random.default_rng([seed, 1, g])
      top, left = rng.integers(0, load - size + 1, size=2)
      offsets.add((int(top), int(left)))
      want = transforms.resize(PatternSource("train", "")[index]["image"], load)[top:top + size, left:left + size]
      if rng.random() < 0.5:
        want = want[:, ::-1]
      np.testing.assert_array_equal(np.rint(batch["image"][k] * 255).astype(np.uint8), want)
  assert len(offsets) > 1
  # Eval reads the whole image at the output size (no crop).
  ev = next(iter(data.eval_iterator(cfg, global_batch_size=2)))
  want = transforms.resize(PatternSource("test", "")[0]["image"], size)
  np.testing.assert_array_equal(np.rint(ev["image"][0] * 255).astype(np.uint8), want)


def test_scale_crop_of_an_in_memory_image_resizes_it_first():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  out = transforms.scale_crop(image, np.random.default_rng(1), 16, 19)
  top, left = np.random.default_rng(1).integers(0, 4, size=2)
  np.testing.assert_array_equal(out, transforms.resize(image, 19)[top:top + 16, left:left + 16])
  digits = data.default_data_config()
  digits.update(dict(name="digits", image_size=8, augment="scale_crop"))
  chex.assert_shape(next(data.train_iterator(digits, global_batch_size=4, seed=0))["image"], (4, 8, 8, 1))


@pytest.mark.parametrize("augment, ratio, message", [
    ("flip,scale_crop", 76 / 64, "scale_crop takes the image larger than the output and must come first"),
    ("scale_crop,scale_crop", 76 / 64, "must come first, once"),
    ("scale_crop", 0.5, r"data.scale_crop_ratio must be a number in \[1.0, 4.0\]"),
])
def test_scale_crop_config_errors(augment, ratio, message):
  cfg = data.default_data_config()
  cfg.update(dict(augment=augment, scale_crop_ratio=ratio))
  with pytest.raises(UserError, match=message):
    data.resolve(cfg)
