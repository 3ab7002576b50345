"""Segmentation data through the pipelines: digits_seg, field kinds, alignment, contract, element_spec, bad input."""
import json

import chex
import numpy as np
import pytest
from scipy import ndimage

from jaxcnn import data
from jaxcnn.data import canvas, geometry, sources, transforms
from jaxcnn.errors import UserError


def _cfg(**overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name="digits_seg", augment="scale,crop,flip", num_threads=2, prefetch=2))
  cfg.update(overrides)
  return cfg


def _take(iterator, steps):
  return [next(iterator) for _ in range(steps)]


# ----------------------------------------------------------------------------- digits_seg


def test_digits_seg_is_the_documented_recipe():
  info = data.dataset_info("digits_seg")
  assert info.embedded and info.num_classes == 11 and info.image_shape == (64, 64, 1)
  assert info.field_kinds == {"image": "image", "segmentation": "mask"} and info.spatial
  assert info.class_names[0] == "background" and info.ignore_label == 255
  train, test = data.get_source("digits_seg", "train"), data.get_source("digits_seg", "test")
  assert (len(train), len(test)) == (2000, 500)
  assert set(test[0]) == {"image", "segmentation"}
  images, labels = sources.digits_arrays()["test"]
  again = canvas.digit_canvases(images, labels, 500, np.random.default_rng([5, 1]))
  np.testing.assert_array_equal(test.images, again["image"])
  np.testing.assert_array_equal(test.arrays["segmentation"], again["segmentation"])


def test_canvases_label_ink_pixels_and_box_it_tightly():
  splits = canvas.digits_canvas_splits()
  for split in ("train", "test"):
    a = splits[split]
    image, mask = a["image"][..., 0], a["segmentation"]
    np.testing.assert_array_equal(mask > 0, image >= canvas.INK_THRESHOLD)    # no overlaps: ink is exactly labelled
    counts = a["valid"].sum(1)
    assert counts.min() >= 1 and counts.max() == 4 and 2.3 < counts.mean() < 3.2
    assert 0.04 < (mask > 0).mean() < 0.2
    np.testing.assert_array_equal(np.bincount(mask.ravel(), minlength=11) > 0, True)   # every class occurs
    for n in range(0, len(mask), 97):
      for slot in np.flatnonzero(a["valid"][n]):
        x1, y1, x2, y2 = a["boxes"][n, slot].astype(int)
        inside = mask[n, y1:y2, x1:x2] == a["classes"][n, slot] + 1
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()   # tight
      assert not a["boxes"][n, ~a["valid"][n]].any()


def test_canvases_use_only_the_digits_they_are_given():
  images = np.zeros((2, 8, 8, 1), np.uint8)
  images[:, 2:6, 3:5] = 255
  out = canvas.digit_canvases(images, np.array([3, 7]), 50, np.random.default_rng(0), canvas_size=32,
                              digit_size=(8, 12))
  assert set(np.unique(out["segmentation"])) == {0, 4, 8}
  assert set(out["classes"][out["valid"]]) == {3, 7}


# ----------------------------------------------------------------------------- batches


def test_train_and_eval_batches_shapes_dtypes_and_element_spec():
  cfg = _cfg()
  batch = next(data.train_iterator(cfg, global_batch_size=8, seed=0, process_index=1, process_count=2))
  assert set(batch) == {"image", "segmentation"}
  chex.assert_shape([batch["image"], batch["segmentation"]], [(4, 64, 64, 1), (4, 64, 64)])
  chex.assert_type([batch["image"], batch["segmentation"]], [np.float32, np.int32])
  assert set(np.unique(batch["segmentation"])) <= set(range(11)) | {255}
  spec = data.element_spec(cfg, 8, process_index=1, process_count=2)
  assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}
  evals = list(data.eval_iterator(cfg, global_batch_size=96))
  assert len(evals) == 6                                            # ceil(500 / 96)
  joined = {k: np.concatenate([b[k] for b in evals]) for k in evals[0]}
  np.testing.assert_array_equal(joined["mask"], np.arange(576) < 500)
  np.testing.assert_array_equal(joined["segmentation"][:500], data.get_source("digits_seg", "test").arrays[
      "segmentation"])                                              # native size: eval changes nothing
  assert (joined["segmentation"][500:] == 255).all() and (joined["image"][500:] == 0).all()
  classification = data.element_spec(data.default_data_config(), 6)
  assert {k: (v.shape, str(v.dtype)) for k, v in classification.items()} == {
      "image": ((6, 8, 8, 1), "float32"), "label": ((6,), "int32")}


@pytest.mark.parametrize("size", [(48, 80), 40])
def test_non_square_and_resized_outputs(size):
  cfg = _cfg(image_size=size)
  hw = transforms.hw(size)
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=1))
  chex.assert_shape([batch["image"], batch["segmentation"]], [(4, *hw, 1), (4, *hw)])
  ev = next(iter(data.eval_iterator(cfg, global_batch_size=4)))
  chex.assert_shape([ev["image"], ev["segmentation"]], [(4, *hw, 1), (4, *hw)])
  side = min(hw)                           # 64 x 64 canvases fitted: a side x side image, the rest ignored
  assert (ev["segmentation"][:, :side, :side] != 255).all()
  assert (ev["segmentation"][:, side:] == 255).all() and (ev["segmentation"][:, :, side:] == 255).all()
  spec = data.element_spec(cfg, 4)
  assert spec["image"].shape == (4, *hw, 1) and spec["segmentation"].shape == (4, *hw)


def test_classification_with_a_non_square_size():
  cfg = data.default_data_config()
  cfg.update(dict(name="digits", image_size=(12, 20), augment="crop,flip"))
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  chex.assert_shape(batch["image"], (4, 12, 20, 1))
  ev = next(iter(data.eval_iterator(cfg, global_batch_size=4)))
  want = transforms.resize(data.get_source("digits", "test")[0]["image"], (12, 20))
  mean, std = data.channel_stats("digits")
  np.testing.assert_array_equal(ev["image"][0], transforms.normalize(want, mean, std))


def test_stream_matches_the_documented_formula():
  """Element g: example permutation(seed, epoch)[g % N], geometric ops in order from default_rng([seed, 1, g]),
  then fitted into the output size and normalised."""
  seed, n, batch = 3, 40, 10
  cfg = _cfg(train_split="train[:40]", image_size=(48, 56), augment="scale,crop,flip,erase")
  spec = data.resolve(cfg)
  batches = _take(data.train_iterator(cfg, global_batch_size=batch, seed=seed), 5)
  source = data.get_source("digits_seg", "train[:40]")
  mean, std = spec.mean_std()
  kinds = spec.info.field_kinds
  for t in (0, 4):
    for k in (0, 9):
      g = t * batch + k
      example = source[np.random.default_rng([seed, g // n]).permutation(n)[g % n]]
      example = {"image": example["image"], "segmentation": example["segmentation"].astype(np.int32)}
      rng = np.random.default_rng([seed, 1, g])
      example = geometry.random_scale(example, kinds, rng, (0.5, 2.0))
      example = geometry.random_crop(example, kinds, rng, (48, 56), 255)
      example = geometry.random_flip(example, kinds, rng)
      image = transforms.random_erase(transforms.normalize(example["image"], mean, std), rng)
      np.testing.assert_array_equal(batches[t]["image"][k], image)
      np.testing.assert_array_equal(batches[t]["segmentation"][k], example["segmentation"])


def test_process_shards_and_resume_carry_the_masks():
  cfg = _cfg(train_split="train[:30]")
  whole = _take(data.train_iterator(cfg, global_batch_size=8, seed=2), 5)       # crosses an epoch
  shards = [_take(data.train_iterator(cfg, global_batch_size=8, seed=2, process_index=p, process_count=2), 5)
            for p in range(2)]
  for t in range(5):
    chex.assert_trees_all_equal({k: np.concatenate([s[t][k] for s in shards]) for k in whole[t]}, whole[t])
  it = data.train_iterator(cfg, global_batch_size=8, seed=2)
  _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  resumed = data.train_iterator(cfg, global_batch_size=8, seed=2)
  resumed.set_state(state)
  chex.assert_trees_all_equal(_take(resumed, 3), whole[2:])


# ----------------------------------------------------------------------------- a registered image = its own mask


class BlockSource:
  """Images of varied sizes made of 16 x 16 blocks of classes 0..4, image 40 * (c + 1)."""

  def __init__(self, split, data_dir, bad=None):
    self.n, self.bad = 12, bad

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    rng = np.random.default_rng(index)
    h, w = 40 + 7 * (index % 4), 50 + 9 * (index % 3)
    mask = np.kron(rng.integers(0, 5, (h // 16 + 1, w // 16 + 1)), np.ones((16, 16), np.int64))[:h, :w]
    image = (40 * (mask + 1)).astype(np.uint8)
    mask = mask.astype(np.uint8)
    if self.bad == "value" and index == 5:
      mask[3, 4] = 9
    if self.bad == "size" and index == 5:
      mask = mask[:-1]
    return {"image": np.stack([image] * 3, -1), "segmentation": mask}

  def describe(self, index):
    return f"/blocks/{index}.png"


@pytest.fixture
def blocks():
  def register(bad=None):
    info = data.DatasetInfo("toy_blocks", 5, (32, 48, 3), False, "train", "test", None,
                            fields={"image": "image", "segmentation": "mask"})
    data.register_source(info, lambda split, data_dir: BlockSource(split, data_dir, bad),
                         stats=((0.0,) * 3, (1.0,) * 3))
  register()
  yield register
  for table in (sources._INFOS, sources._OPENERS):
    table.pop("toy_blocks", None)
  sources._open_registered.cache_clear()


def test_pipeline_moves_the_mask_with_the_image(blocks):
  cfg = _cfg(name="toy_blocks", image_size=(32, 48), data_dir="/blocks", normalize="unit")
  for batch in _take(data.train_iterator(cfg, global_batch_size=6, seed=0), 4) + list(
      data.eval_iterator(cfg, global_batch_size=6)):
    compared = 0
    for image, mask in zip(np.rint(batch["image"][..., 0] * 255).astype(int), batch["segmentation"]):
      padded = mask == 255
      np.testing.assert_array_equal(image[padded], 0)
      interior = np.zeros_like(padded)
      for c in range(5):
        interior |= ndimage.binary_erosion(mask == c, np.ones((5, 5)), border_value=0)
      compared += interior.sum()
      np.testing.assert_allclose(image[interior], 40 * (mask[interior] + 1), atol=1)
    assert compared > 0.1 * batch["segmentation"].size


@pytest.mark.parametrize("bad, message", [
    ("value", r"/blocks/5.png \(dataset 'toy_blocks'\): 'segmentation' mask holds value 9; allowed: the classes "
              r"0..4 and the ignore label 255"),
    ("size", r"/blocks/5.png \(dataset 'toy_blocks'\): the image is 47x68 but its 'segmentation' mask is 46x68; "
             r"an image and its mask must have the same size"),
])
def test_bad_masks_name_the_file(blocks, bad, message):
  blocks(bad)
  cfg = _cfg(name="toy_blocks", data_dir="/blocks", augment="")
  with pytest.raises(UserError, match=message) as err:
    list(data.eval_iterator(cfg, "train", global_batch_size=12))
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, augment, message", [
    ("digits_seg", "scale,randaugment", "randaugment moves the image's pixels but not the 'segmentation' \\(mask\\) "
                                        "of dataset 'digits_seg'; allowed there: scale, crop, flip, zoom_out, "
                                        "photometric, erase"),
    ("digits_seg", "autoaugment", "autoaugment moves the image's pixels"),
    ("digits_seg", "scale_crop", "scale_crop moves the image's pixels"),
    ("digits", "scale,flip", "scale is for datasets with masks or boxes; 'digits' has none"),
])
def test_image_only_geometry_is_refused_where_it_would_misalign(name, augment, message):
  with pytest.raises(UserError, match=message) as err:
    data.resolve(_cfg(name=name, augment=augment))
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    (dict(image_size=(32, 0)), r"data.image_size must be an integer >= 0 \(0: native, S: S x S\) or a pair"),
    (dict(image_size=(32, 32, 3)), "data.image_size must be"),
    (dict(scale_range=(2.0, 0.5)), r"data.scale_range must be a pair \(min, max\)"),
    (dict(scale_base=-1), "data.scale_base must be an integer >= 0"),
])
def test_bad_new_config_values(override, message):
  with pytest.raises(UserError, match=message):
    data.resolve(_cfg(**override))


def test_dataset_info_validates_fields():
  info = data.DatasetInfo("x", 3, (8, 8, 3), False, "train", "test", None, fields={"image": "image", "m": "mask"})
  assert info.fields == (("image", "image"), ("m", "mask")) and hash(info)
  assert data.dataset_info("digits").field_kinds == {"image": "image", "label": "class"}
  assert not data.dataset_info("digits").spatial
  with pytest.raises(ValueError, match="unknown field kind"):
    data.DatasetInfo("x", 3, (8, 8, 3), False, "train", "test", None, fields={"image": "image", "m": "polygon"})
  with pytest.raises(ValueError, match="exactly one image field"):
    data.DatasetInfo("x", 3, (8, 8, 3), False, "train", "test", None, fields={"img": "image"})


# ----------------------------------------------------------------------------- boxes


def test_digits_det_batches_and_spec():
  cfg = _cfg(name="digits_det", image_size=(48, 56))
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  spec = data.element_spec(cfg, 4)
  assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}
  assert spec["boxes"].shape == (4, 4, 4) and spec["boxes_valid"].dtype == np.bool_
  assert spec["box_classes"].dtype == np.int32 and "label" not in spec
  test = canvas.digits_canvas_splits()["test"]
  ev = next(iter(data.eval_iterator(_cfg(name="digits_det"), global_batch_size=8)))
  np.testing.assert_array_equal(ev["boxes"], test["boxes"][:8])
  np.testing.assert_array_equal(ev["boxes_valid"], test["valid"][:8])


@pytest.fixture
def instances():
  """Digit canvases whose mask holds each digit's slot + 1 (instance ids), with their boxes."""
  a = canvas.digits_canvas_splits()["train"]
  n = 40
  inst = np.zeros((n, 64, 64), np.uint8)
  for i in range(n):
    for slot in np.flatnonzero(a["valid"][i]):
      x1, y1, x2, y2 = a["boxes"][i, slot].astype(int)
      inst[i, y1:y2, x1:x2][a["segmentation"][i, y1:y2, x1:x2] > 0] = slot + 1
  arrays = {"image": a["image"][:n], "segmentation": inst, "boxes": a["boxes"][:n], "boxes_valid": a["valid"][:n]}
  info = data.DatasetInfo("toy_instances", 5, (64, 64, 1), True, "train", "test", None,
                          fields={"image": "image", "segmentation": "mask", "boxes": "boxes"})
  sources.register_embedded(info, lambda: {"train": arrays, "test": arrays})
  yield
  sources._INFOS.pop("toy_instances", None)
  sources._EMBEDDED_LOADERS.pop("toy_instances", None)


def test_pipeline_moves_boxes_with_their_mask_regions(instances):
  cfg = _cfg(name="toy_instances", image_size=(40, 48))
  checked = invalidated = 0
  for batch in _take(data.train_iterator(cfg, global_batch_size=8, seed=5), 5) + list(
      data.eval_iterator(cfg, global_batch_size=8)):
    for mask, boxes, valid in zip(batch["segmentation"], batch["boxes"], batch["boxes_valid"]):
      for slot in range(4):
        ys, xs = np.nonzero(mask == slot + 1)
        width, height = boxes[slot, 2:] - boxes[slot, :2]
        if valid[slot] and min(width, height) < 1:
          assert len(ys) <= 2 * max(width, height)    # a sliver: nearest sampling may keep no pixel of it
        elif valid[slot]:
          assert len(ys), (boxes[slot], slot)
          region = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
          assert (region[:2] >= boxes[slot, :2] - 1).all() and (region[2:] <= boxes[slot, 2:] + 1).all()
          if boxes[slot, 0] > 0 and boxes[slot, 1] > 0 and boxes[slot, 2] < 48 and boxes[slot, 3] < 40:
            # Not clipped by a crop: still tight, up to the rows and columns that downscaling skips.
            np.testing.assert_allclose(boxes[slot], region, atol=2.0)
            checked += 1
        else:
          assert len(ys) <= 2        # gone, or a sliver that nearest sampling kept where the box lost its area
          invalidated += len(ys) == 0 and boxes[slot].any()
  assert checked > 100 and invalidated > 0


def test_label_is_optional():
  """A dataset declaring only an image (plus extras) yields batches without 'label'."""
  info = data.DatasetInfo("toy_unlabelled", 1, (8, 8, 1), True, "train", "test", None, fields={"image": "image"})
  images = np.arange(10 * 64, dtype=np.uint8).reshape(10, 8, 8, 1)
  sources.register_embedded(info, lambda: {"train": {"image": images, "code": np.arange(10)},
                                           "test": {"image": images, "code": np.arange(10)}})
  try:
    cfg = data.default_data_config()
    cfg.update(dict(name="toy_unlabelled", augment="flip", normalize="unit"))
    batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
    assert set(batch) == {"image", "code"} and set(data.element_spec(cfg, 4)) == {"image", "code"}
    np.testing.assert_allclose(batch["image"][:, 0, :, 0].max(1) * 255,
                               images[batch["code"], 0, :, 0].max(1), atol=1e-3)
  finally:
    sources._INFOS.pop("toy_unlabelled", None)
    sources._EMBEDDED_LOADERS.pop("toy_unlabelled", None)
