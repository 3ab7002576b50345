"""VOC 2012 and Cityscapes from tiny folders written here, tfds oxford_iiit_pet through mock_data."""
import os

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcnn import data
from jaxcnn.data import cityscapes, voc
from jaxcnn.errors import UserError


def _cfg(**overrides):
  cfg = data.default_data_config()
  cfg.update(dict(augment="scale,crop,flip", num_threads=0, prefetch=0))
  cfg.update(overrides)
  return cfg


def _save_png(path, array, palette=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(array)
  if palette:
    im = im.convert("P") if array.ndim == 3 else Image.fromarray(array, mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
  im.save(path)


def _voc_mask(h, w, seed):
  rng = np.random.default_rng(seed)
  mask = np.zeros((h, w), np.uint8)
  mask[h // 4:3 * h // 4, w // 5:w // 2] = rng.integers(1, 21)
  mask[h // 4, :] = 255                                   # a border line, ignored
  return mask


def _write_voc(root, ids, aug_ids=()):
  base = os.path.join(root, "VOCdevkit", "VOC2012")
  for n, i in enumerate(list(ids) + list(aug_ids)):
    h, w = 30 + 3 * n, 40 + 2 * n
    image = np.random.default_rng(n).integers(0, 256, (h, w, 3), dtype=np.uint8)
    os.makedirs(os.path.join(base, "JPEGImages"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(base, "JPEGImages", f"{i}.jpg"))
    folder = "SegmentationClassAug" if i in aug_ids else "SegmentationClass"
    _save_png(os.path.join(base, folder, f"{i}.png"), _voc_mask(h, w, n), palette=folder == "SegmentationClass")
  lists = os.path.join(base, "ImageSets", "Segmentation")
  os.makedirs(lists, exist_ok=True)
  with open(os.path.join(lists, "train.txt"), "w") as f:
    f.write("\n".join(ids[:3]) + "\n")
  with open(os.path.join(lists, "val.txt"), "w") as f:
    f.write("\n".join(ids[3:]) + "\n")
  if aug_ids:
    with open(os.path.join(lists, "train_aug.txt"), "w") as f:
      f.write("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in aug_ids))
  return base


IDS = ["2007_000032", "2007_000039", "2007_000063", "2008_000001", "2008_000002"]


def test_voc_reads_palette_indices_and_batches(tmp_path):
  base = _write_voc(str(tmp_path), IDS, aug_ids=["2009_000010", "2009_000011"])
  info = data.dataset_info("voc2012_seg")
  assert info.num_classes == 21 and info.class_names[15] == "person" and "voc2012_seg" in data.registered_names()
  val = data.get_source("voc2012_seg", "val", data_dir=str(tmp_path))
  assert len(val) == 2
  example = val[1]
  np.testing.assert_array_equal(example["segmentation"], _voc_mask(30 + 3 * 4, 40 + 2 * 4, 4))   # indices, not colours
  assert example["image"].shape == (42, 48, 3)
  aug = data.get_source("voc2012_seg", "train_aug", data_dir=str(tmp_path))
  np.testing.assert_array_equal(aug[0]["segmentation"], _voc_mask(45, 50, 5))
  assert "SegmentationClassAug/2009_000010.png" in aug.describe(0)
  # data_dir may also be VOC2012 itself
  assert len(data.get_source("voc2012_seg", "train", data_dir=base)) == 3
  cfg = _cfg(name="voc2012_seg", data_dir=str(tmp_path), image_size=(32, 40))
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  chex.assert_shape([batch["image"], batch["segmentation"]], [(4, 32, 40, 3), (4, 32, 40)])
  assert set(np.unique(batch["segmentation"])) <= set(range(21)) | {255}
  evals = list(data.eval_iterator(cfg, global_batch_size=4))
  assert len(evals) == 1 and evals[0]["mask"].tolist() == [1, 1, 0, 0]
  fitted = evals[0]["segmentation"][0]        # 39 x 46 fitted into 32 x 40: factor 0.82 -> 32 x 38, then 2 columns
  assert (fitted[:, 38:] == 255).all() and (fitted[:, :38] != 255).any()


def test_voc_missing_files_are_named(tmp_path):
  with pytest.raises(UserError, match="set data.data_dir"):
    data.get_source("voc2012_seg", "train", data_dir="")
  with pytest.raises(UserError, match=r"VOC 2012 split 'train' needs .*VOCdevkit/VOC2012/JPEGImages, which is "
                                      r"missing"):
    data.get_source("voc2012_seg", "train", data_dir=str(tmp_path / "nothing"))
  _write_voc(str(tmp_path), IDS)
  with pytest.raises(UserError, match=r"split 'train_aug' needs .*SegmentationClassAug.*DeepLab's SBD"):
    data.get_source("voc2012_seg", "train_aug", data_dir=str(tmp_path))
  os.remove(tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2008_000002.png")
  with pytest.raises(UserError, match=r"1 of the 4 files named by .*val.txt are missing \(first: "
                                      r".*SegmentationClass/2008_000002.png\)") as err:
    data.get_source("voc2012_seg", "val", data_dir=str(tmp_path))
  assert "\n" not in str(err.value)


def test_voc_rgb_masks_and_bad_values_are_refused(tmp_path):
  base = _write_voc(str(tmp_path), IDS)
  path = os.path.join(base, "SegmentationClass", "2007_000039.png")
  Image.fromarray(np.zeros((33, 42, 3), np.uint8)).save(path)
  cfg = _cfg(name="voc2012_seg", data_dir=str(tmp_path), augment="", image_size=32)
  with pytest.raises(UserError, match=f"{path} is a RGB image; want a palette"):
    list(data.eval_iterator(cfg, "train", global_batch_size=3))
  mask = _voc_mask(33, 42, 1)
  mask[5, 5] = 30
  _save_png(path, mask, palette=True)
  data.sources._open_registered.cache_clear()
  with pytest.raises(UserError, match=r"2007_000039.jpg with mask .*2007_000039.png \(dataset 'voc2012_seg'\): "
                                      r"'segmentation' mask holds value 30; allowed: the classes 0..20 and the "
                                      r"ignore label 255"):
    list(data.eval_iterator(cfg, "train", global_batch_size=3))


def _write_cityscapes(root, split, names, label_ids):
  for n, name in enumerate(names):
    city = name.split("_")[0]
    image = np.random.default_rng(n).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    _save_png(os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"), image)
    _save_png(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"), label_ids[n])


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
  ids = np.arange(16 * 32).reshape(16, 32) % 34
  label_ids = [ids.astype(np.uint8), np.full((16, 32), 26, np.uint8)]
  _write_cityscapes(str(tmp_path), "val", ["zurich_000001_000019", "aachen_000000_000019"], label_ids)
  source = data.get_source("cityscapes", "val", data_dir=str(tmp_path))
  assert len(source) == 2 and "aachen" in source.describe(0)     # sorted paths
  np.testing.assert_array_equal(source[0]["segmentation"], 13)    # car
  mapped = source[1]["segmentation"]
  expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
              27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  for label_id in range(34):
    np.testing.assert_array_equal(mapped[ids == label_id], expected.get(label_id, 255))
  assert data.dataset_info("cityscapes").num_classes == 19
  cfg = _cfg(name="cityscapes", data_dir=str(tmp_path), image_size=(8, 16), eval_split="val")
  ev = next(iter(data.eval_iterator(cfg, global_batch_size=2)))
  chex.assert_shape(ev["segmentation"], (2, 8, 16))
  np.testing.assert_array_equal(ev["segmentation"][0], 13)       # exact half size: no padding


def test_cityscapes_missing_labels_and_bad_ids(tmp_path):
  _write_cityscapes(str(tmp_path), "train", ["bonn_000000_000019"], [np.full((16, 32), 40, np.uint8)])
  with pytest.raises(UserError, match="Cityscapes split 'val' needs .*leftImg8bit/val, which is missing"):
    data.get_source("cityscapes", "val", data_dir=str(tmp_path))
  source = data.get_source("cityscapes", "train", data_dir=str(tmp_path))
  with pytest.raises(UserError, match="bonn_000000_000019_gtFine_labelIds.png holds value 40, which is not a "
                                      r"Cityscapes label id \(0..33\)"):
    source[0]
  os.remove(os.path.join(tmp_path, "gtFine", "train", "bonn", "bonn_000000_000019_gtFine_labelIds.png"))
  data.sources._open_registered.cache_clear()
  with pytest.raises(UserError, match=r"1 of the 1 files .* missing \(first: .*bonn_000000_000019_gtFine_labelIds"):
    data.get_source("cityscapes", "train", data_dir=str(tmp_path))


def _pet_examples(n, bad=False):
  examples = []
  for i in range(n):
    h, w = 20 + i, 24 + 2 * i
    trimap = np.full((h, w, 1), 2, np.uint8)
    trimap[4:12, 5:15] = 3
    trimap[5:11, 6:14] = 1
    if bad and i == 2:
      trimap[0, 0] = 0
    examples.append({"image": np.full((h, w, 3), 10 * i, np.uint8), "segmentation_mask": trimap, "label": i % 37,
                     "species": i % 2, "file_name": f"pet_{i}.jpg", "head_bbox": np.zeros(4, np.float32)})
  return examples


def test_pets_trimaps_become_pet_background_and_ignored_border():
  with tfds.testing.mock_data(as_data_source_fn=lambda *args, **kwargs: _pet_examples(5)):
    source = data.get_source("oxford_iiit_pet", "train")
    mask = source[0]["segmentation"]
    assert set(source[0]) == {"image", "segmentation"}
    assert mask[7, 8] == 1 and mask[0, 0] == 0 and mask[4, 5] == 255
    cfg = _cfg(name="oxford_iiit_pet", image_size=32)
    batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
    evals = list(data.eval_iterator(cfg, global_batch_size=4))
  chex.assert_shape([batch["image"], batch["segmentation"]], [(4, 32, 32, 3), (4, 32, 32)])
  assert set(np.unique(batch["segmentation"])) <= {0, 1, 255}
  assert len(evals) == 2 and evals[1]["mask"].tolist() == [1, 0, 0, 0]
  info = data.dataset_info("oxford_iiit_pet")
  assert info.num_classes == 2 and info.tfds_name == "oxford_iiit_pet"


def test_pets_bad_trimap_value_is_named():
  with tfds.testing.mock_data(as_data_source_fn=lambda *args, **kwargs: _pet_examples(3, bad=True)):
    source = data.get_source("oxford_iiit_pet", "test")
    with pytest.raises(UserError, match=r"example 2 of tfds oxford_iiit_pet has trimap value 0; allowed: 1 \(pet\), "
                                        r"2 \(background\), 3 \(border\)"):
      source[2]
