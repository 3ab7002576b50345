"""Training and eval pipelines on digits: the determinism contract, resume, epochs, padding, validation."""
import json

import chex
import ml_collections
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.data import transforms
from jaxcnn.errors import UserError


def _cfg(**overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name="digits", image_size=12, augment="crop,flip", crop_padding=2, num_threads=2, prefetch=2))
  cfg.update(overrides)
  return cfg


def _take(iterator, steps):
  return [next(iterator) for _ in range(steps)]


def _concat(per_process_batches):
  """[process][step] batches -> [step] global batches."""
  return [{k: np.concatenate([p[t][k] for p in per_process_batches]) for k in per_process_batches[0][t]}
          for t in range(len(per_process_batches[0]))]


def test_default_config_has_every_key():
  cfg = data.default_data_config()
  assert isinstance(cfg, ml_collections.ConfigDict)
  for key in ["name", "image_size", "channels", "train_split", "eval_split", "augment", "crop_padding",
              "normalize", "data_dir", "download", "num_threads", "prefetch", "randaugment_n", "randaugment_m",
              "randaugment_mstd", "randaugment_prob", "randaugment_increasing", "erase_prob", "erase_area",
              "erase_aspect", "erase_mode", "repeated_aug"]:
    assert key in cfg
  spec = data.resolve(cfg)
  assert spec.image_shape == (8, 8, 1) and spec.train_split == "train" and spec.eval_split == "test"


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_single_process_batches(process_count):
  # 100 training examples and global batch 32: steps 3 and 6 cross epoch boundaries.
  cfg = _cfg(train_split="train[:100]")
  whole = _take(data.train_iterator(cfg, global_batch_size=32, seed=7), 8)
  shards = [_take(data.train_iterator(cfg, global_batch_size=32, seed=7, process_index=p,
                                      process_count=process_count), 8) for p in range(process_count)]
  for p in range(process_count):
    chex.assert_shape(shards[p][0]["image"], (32 // process_count, 12, 12, 1))
  joined = _concat(shards)
  for t in range(8):
    chex.assert_trees_all_equal(joined[t], whole[t])


def test_batches_do_not_depend_on_threads_or_prefetch():
  cfg = _cfg(train_split="train[:100]")
  a = _take(data.train_iterator(cfg, global_batch_size=16, seed=3), 5)
  b = _take(data.train_iterator(_cfg(train_split="train[:100]", num_threads=0, prefetch=0),
                                global_batch_size=16, seed=3), 5)
  chex.assert_trees_all_equal(a, b)
  c = _take(data.train_iterator(cfg, global_batch_size=16, seed=4), 1)
  assert not np.array_equal(a[0]["image"], c[0]["image"])       # the seed matters


def test_stream_matches_the_documented_formula():
  """Element k of step t is permutation(seed, epoch)[g % N] augmented by default_rng([seed, 1, g])."""
  seed, n, batch = 5, 50, 20
  cfg = _cfg(train_split="train[:50]")
  batches = _take(data.train_iterator(cfg, global_batch_size=batch, seed=seed), 4)
  images = transforms.resize_batch(data.get_source("digits", "train[:50]").images, 12)
  labels = data.get_source("digits", "train[:50]").labels
  mean, std = data.channel_stats("digits")
  opts = transforms.AugmentOptions(crop_padding=2)
  for t in [0, 2, 3]:
    for k in [0, 7, 19]:
      g = t * batch + k
      index = np.random.default_rng([seed, g // n]).permutation(n)[g % n]
      image = transforms.augment(images[index], np.random.default_rng([seed, 1, g]), ("crop", "flip"), opts)
      np.testing.assert_array_equal(batches[t]["image"][k], transforms.normalize(image, mean, std))
      assert batches[t]["label"][k] == labels[index]


def test_reshuffles_every_epoch_and_covers_each_example_once():
  cfg = _cfg(train_split="train[:64]", augment="")
  epochs = _take(data.train_iterator(cfg, global_batch_size=64, seed=0), 3)
  source = data.get_source("digits", "train[:64]")
  reference = sorted(zip(source.labels.tolist(), (im.tobytes() for im in transforms.resize_batch(source.images, 12))))
  spec = data.resolve(cfg)
  mean, std = spec.mean_std()
  for batch in epochs:
    # Undo the normalisation to compare with the source images.
    raw = np.rint((batch["image"] * std + mean) * 255).astype(np.uint8)
    assert sorted(zip(batch["label"].tolist(), (im.tobytes() for im in raw))) == reference
  assert not np.array_equal(epochs[0]["label"], epochs[1]["label"])
  assert not np.array_equal(epochs[1]["label"], epochs[2]["label"])


def test_get_state_set_state_resumes_exactly():
  cfg = _cfg()
  it = data.train_iterator(cfg, global_batch_size=24, seed=1, process_index=1, process_count=2)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 4)
  resumed = data.train_iterator(cfg, global_batch_size=24, seed=1, process_index=1, process_count=2)
  resumed.set_state(state)
  chex.assert_trees_all_equal(_take(resumed, 4), expected)


def test_train_shapes_dtypes_and_normalizations():
  batch = next(data.train_iterator(_cfg(image_size=32, channels=3), global_batch_size=8, seed=0))
  chex.assert_shape(batch["image"], (8, 32, 32, 3))
  chex.assert_shape(batch["label"], (8,))
  chex.assert_type([batch["image"], batch["label"]], [np.float32, np.int32])
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])    # grayscale repeated
  unit = next(data.train_iterator(_cfg(normalize="unit", augment=""), global_batch_size=256, seed=0))["image"]
  assert unit.min() == 0.0 and unit.max() == 1.0
  sym = next(data.train_iterator(_cfg(normalize="symmetric", augment=""), global_batch_size=256, seed=0))["image"]
  assert sym.min() == -1.0 and sym.max() == 1.0
  np.testing.assert_allclose(sym, unit * 2 - 1, atol=1e-6)
  std = next(data.train_iterator(_cfg(normalize="standard", augment="", image_size=0), global_batch_size=1437,
                                 seed=0))["image"]
  np.testing.assert_allclose([std.mean(), std.std()], [0.0, 1.0], atol=1e-4)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_covers_every_example_once_with_masks(process_count):
  cfg = _cfg(augment="crop,flip")    # eval never augments
  evals = [data.eval_iterator(cfg, global_batch_size=64, process_index=p, process_count=process_count)
           for p in range(process_count)]
  per_process = [list(e) for e in evals]
  assert all(len(b) == len(e) == 6 for b, e in zip(per_process, evals))      # ceil(360 / 64)
  for batches in per_process:
    for batch in batches:
      chex.assert_shape([batch["image"], batch["label"], batch["mask"]],
                        [(64 // process_count, 12, 12, 1), (64 // process_count,), (64 // process_count,)])
      chex.assert_type(batch["mask"], np.float32)
  joined = _concat(per_process)
  masks = np.concatenate([b["mask"] for b in joined])
  np.testing.assert_array_equal(masks, np.arange(6 * 64) < 360)
  images = np.concatenate([b["image"] for b in joined])
  assert np.all(images[360:] == 0)
  test = data.get_source("digits", "test")
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in joined])[:360], test.labels)
  spec = data.resolve(cfg)
  mean, std = spec.mean_std()
  expected = transforms.normalize(transforms.resize_batch(test.images, 12), mean, std)
  np.testing.assert_array_equal(images[:360], expected)
  chex.assert_trees_all_equal(list(evals[0]), per_process[0])    # re-iterable, fresh each time


def test_eval_split_choice():
  assert data.eval_iterator(_cfg(), global_batch_size=100).num_examples == 360
  assert data.eval_iterator(_cfg(eval_split="train[:30]"), global_batch_size=100).num_examples == 30
  assert data.eval_iterator(_cfg(), "train", global_batch_size=100).num_examples == 1437


@pytest.mark.parametrize("override, message", [
    (dict(augment="crop,cutout"), "unknown augmentation 'cutout'.*allowed: .*crop, flip"),
    (dict(normalize="zscore"), "data.normalize must be one of standard, unit, symmetric"),
    (dict(image_size=-1), "data.image_size must be an integer >= 0"),
    (dict(channels=2), "data.channels=2 is not possible"),
    (dict(crop_padding=-2), "data.crop_padding"),
    (dict(crop_pad_mode="wrap"), "data.crop_pad_mode"),
    (dict(num_threads=-1), "data.num_threads"),
    (dict(name="cifar11"), "unknown dataset 'cifar11'"),
    (dict(augment="erase,flip"), "erase acts on the normalised image and must come after"),
    (dict(randaugment_n=-1), "data.randaugment_n must be an integer >= 0"),
    (dict(randaugment_m=11), r"data.randaugment_m must be a number in \[0.0, 10.0\]"),
    (dict(randaugment_mstd=-0.5), "data.randaugment_mstd must be a number >= 0"),
    (dict(randaugment_prob=1.5), "data.randaugment_prob"),
    (dict(erase_prob=-0.1), "data.erase_prob"),
    (dict(erase_area=(0.5, 0.2)), r"data.erase_area must be a pair \(min, max\) with 0.0 < min <= max <= 1.0"),
    (dict(erase_aspect=(0.0, 2.0)), "data.erase_aspect must be a pair"),
    (dict(erase_mode="noise"), "data.erase_mode must be one of pixel, rand, const"),
    (dict(repeated_aug=0), "data.repeated_aug must be an integer >= 1"),
    (dict(repeated_aug=3), "global batch size 8 must be divisible by data.repeated_aug=3"),
])
def test_bad_config_values_raise_user_errors(override, message):
  with pytest.raises(UserError, match=message):
    data.train_iterator(_cfg(**override), global_batch_size=8, seed=0)


@pytest.mark.parametrize("override, message", [
    (dict(randaugment_increasing="yes"), "data.randaugment_increasing must be true or false"),
    (dict(erase_area=0.3), "data.erase_area must be a pair"),
    (dict(randaugment_m="9"), "data.randaugment_m must be a number"),
])
def test_bad_values_in_plain_dict_configs(override, message):
  # A ConfigDict rejects these type changes itself; plain dicts reach the data module's checks.
  with pytest.raises(UserError, match=message):
    data.train_iterator({**_cfg().to_dict(), **override}, global_batch_size=8, seed=0)


def test_bad_batch_and_process_arguments():
  with pytest.raises(UserError, match="divisible by the number of processes 3"):
    data.train_iterator(_cfg(), global_batch_size=8, seed=0, process_index=0, process_count=3)
  with pytest.raises(UserError, match="divisible"):
    data.eval_iterator(_cfg(), global_batch_size=10, process_index=0, process_count=4)
  with pytest.raises(UserError, match="process_index"):
    data.train_iterator(_cfg(), global_batch_size=8, seed=0, process_index=2, process_count=2)
  with pytest.raises(UserError, match="seed"):
    data.train_iterator(_cfg(), global_batch_size=8, seed=-1)
  with pytest.raises(UserError, match="positive integer"):
    data.train_iterator(_cfg(), global_batch_size=0, seed=0)


def test_plain_objects_work_as_config():
  class Plain:
    name, image_size, augment = "digits", 0, "flip"
  batch = next(data.train_iterator(Plain(), global_batch_size=4, seed=0))
  chex.assert_shape(batch["image"], (4, 8, 8, 1))


STRONG = "crop,flip,randaugment,autoaugment,erase"


def test_new_augmentations_and_repeats_keep_process_shards_identical():
  # 50 examples, global batch 24 = 3 copies of 8: the example stream crosses an epoch at step 6.
  cfg = _cfg(train_split="train[:50]", channels=3, augment=STRONG, repeated_aug=3, randaugment_mstd=0.5,
             erase_prob=0.5)
  whole = _take(data.train_iterator(cfg, global_batch_size=24, seed=11), 8)
  shards = [_take(data.train_iterator(cfg, global_batch_size=24, seed=11, process_index=p, process_count=2), 8)
            for p in range(2)]
  chex.assert_shape(shards[1][0]["image"], (12, 12, 12, 3))
  joined = _concat(shards)
  for t in range(8):
    chex.assert_trees_all_equal(joined[t], whole[t])
  single_thread = _take(data.train_iterator(_cfg(train_split="train[:50]", channels=3, augment=STRONG, repeated_aug=3,
                                                 randaugment_mstd=0.5, num_threads=0, prefetch=0),
                                            global_batch_size=24, seed=11), 3)
  chex.assert_trees_all_equal(single_thread, whole[:3])


def test_repeated_aug_puts_each_example_in_every_block_of_the_global_batch():
  cfg = _cfg(train_split="train[:50]", augment="", repeated_aug=3)
  batches = _take(data.train_iterator(cfg, global_batch_size=24, seed=2), 6)
  for batch in batches:
    blocks = [{k: v[8 * r:8 * r + 8] for k, v in batch.items()} for r in range(3)]
    chex.assert_trees_all_equal(blocks[0], blocks[1], blocks[2])         # no augmentation: identical copies
  # Block 0 of steps 0..5 walks one permutation of the 50 examples: slots 0..47 are 48 different examples.
  raw = np.concatenate([b["image"][:8] for b in batches]).reshape(48, -1)
  assert len({row.tobytes() for row in raw}) == 48
  augmented = _take(data.train_iterator(_cfg(train_split="train[:50]", augment="crop,flip,erase", repeated_aug=3),
                                        global_batch_size=24, seed=2), 6)
  for plain, aug in zip(batches, augmented):
    np.testing.assert_array_equal(aug["label"], plain["label"])        # same examples in the same places...
    assert not np.array_equal(aug["image"][:8], aug["image"][8:16])    # ...augmented differently per copy


def test_stream_with_repeats_and_erase_matches_the_documented_formula():
  seed, n, batch, repeats = 4, 50, 12, 3
  cfg = _cfg(train_split="train[:50]", augment="crop,randaugment,erase", repeated_aug=repeats, randaugment_n=3)
  spec = data.resolve(cfg)
  batches = _take(data.train_iterator(cfg, global_batch_size=batch, seed=seed), 14)
  images = transforms.resize_batch(data.get_source("digits", "train[:50]").images, 12)
  labels = data.get_source("digits", "train[:50]").labels
  mean, std = spec.mean_std()
  for t in [0, 12, 13]:              # step 12 holds slots 48..51: the epoch changes inside it
    for k in range(batch):
      g = t * batch + k
      slot = t * (batch // repeats) + k % (batch // repeats)
      index = np.random.default_rng([seed, slot // n]).permutation(n)[slot % n]
      rng = np.random.default_rng([seed, 1, g])
      image = transforms.augment(images[index], rng, ("crop", "randaugment"), spec.augment_options)
      image = transforms.augment(transforms.normalize(image, mean, std), rng, ("erase",), spec.augment_options)
      np.testing.assert_array_equal(batches[t]["image"][k], image)
      assert batches[t]["label"][k] == labels[index]
