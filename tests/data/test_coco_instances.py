"""coco2017_inst / register_coco_instances: a tiny COCO-format file (polygons, an RLE crowd region, an image
without annotations) read as pycocotools reads it, through the pipeline with masks aligned to boxes, and
missing files as one-line errors."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from jaxcnn import data
from jaxcnn.data import coco, geometry
from jaxcnn.errors import UserError

SIZES = {1: (40, 56), 2: (48, 32), 3: (36, 44)}   # image id: (H, W); image 3 has no annotations


def _crowd_rle(h, w):
  m = np.zeros((h, w), np.uint8, order="F")
  m[20:40, 5:25] = 1
  rle = mask_utils.encode(np.asfortranarray(m))
  return {"size": rle["size"], "counts": rle["counts"].decode()}   # compressed RLE as in the files


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco")
  (root / "annotations").mkdir()
  rng = np.random.default_rng(0)
  images = []
  for split in ("train2017", "val2017"):
    (root / split).mkdir()
    for i, (h, w) in SIZES.items():
      Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / split / f"{i:012d}.png")
  images = [{"id": i, "file_name": f"{i:012d}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()]
  anns = [
      {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [4.0, 5.0, 20.0, 16.0], "area": 200.0,
       "segmentation": [[4, 5, 24, 5, 24, 21, 4, 21]]},
      {"id": 2, "image_id": 1, "category_id": 90, "iscrowd": 0, "bbox": [30.0, 10.0, 20.0, 25.0], "area": 150.0,
       "segmentation": [[30, 10, 50, 10, 40, 35], [31, 30, 35, 30, 33, 34]]},       # two polygons
      {"id": 3, "image_id": 2, "category_id": 44, "iscrowd": 0, "bbox": [2.0, 2.0, 10.5, 12.5], "area": 90.0,
       "segmentation": [[2, 2, 12.5, 2, 12.5, 14.5, 2, 14.5]]},
      {"id": 4, "image_id": 2, "category_id": 13, "iscrowd": 1, "bbox": [5.0, 20.0, 20.0, 20.0], "area": 400.0,
       "segmentation": _crowd_rle(48, 32)},
  ]
  categories = [{"id": int(c), "name": n} for c, n in zip(coco.CATEGORY_IDS, coco.CLASS_NAMES)]
  for split in ("train", "val"):
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
      json.dump({"images": images, "annotations": anns, "categories": categories}, f)
  return root


def test_examples_are_pycocotools_masks_boxes_and_contiguous_classes(coco_dir):
  source = data.get_source("coco2017_inst", "val", data_dir=str(coco_dir))
  ref = COCO(str(coco_dir / "annotations" / "instances_val2017.json"))
  assert len(source) == 3
  for index, image_id in enumerate(sorted(SIZES)):
    example = source[index]
    anns = ref.loadAnns(ref.getAnnIds(imgIds=image_id))
    h, w = SIZES[image_id]
    assert example["image"].shape == (h, w, 3) and example["box_masks"].shape == (len(anns), h, w)
    assert example["box_masks"].dtype == np.uint8
    for n, ann in enumerate(anns):
      np.testing.assert_array_equal(example["box_masks"][n], ref.annToMask(ann))
      x, y, bw, bh = ann["bbox"]
      np.testing.assert_allclose(example["boxes"][n], [x, y, x + bw, y + bh])
      assert example["box_classes"][n] == coco.contiguous_class(ann["category_id"])
      assert example["box_crowd"][n] == bool(ann["iscrowd"])
  assert source[1]["box_classes"].tolist() == [39, 11] and source[1]["box_crowd"].tolist() == [False, True]
  assert source[0]["box_classes"].tolist() == [0, 79]
  assert source[1]["box_masks"][1, 20:40, 5:25].all() and source[1]["box_masks"][1].sum() == 400   # the RLE
  assert source[2]["boxes"].shape == (0, 4) and source[2]["box_masks"].shape == (0, 36, 44)


def _cfg(coco_dir, **overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name="coco2017_inst", data_dir=str(coco_dir), image_size=64, normalize="unit", num_threads=1,
                  max_boxes=4))
  cfg.update(overrides)
  return cfg


def test_batches_carry_masks_aligned_with_their_boxes(coco_dir):
  source = data.get_source("coco2017_inst", "train", data_dir=str(coco_dir))
  batch = next(data.train_iterator(_cfg(coco_dir, augment="flip"), global_batch_size=3, seed=0))
  assert batch["box_masks"].shape == (3, 4, 64, 64) and batch["box_masks"].dtype == np.uint8
  assert sorted(batch["boxes_valid"].sum(1).tolist()) == [0, 2, 2]
  for i in range(3):
    valid = batch["boxes_valid"][i]
    assert not batch["box_masks"][i][~valid].any()
    for m in np.flatnonzero(valid):
      rows, cols = np.nonzero(batch["box_masks"][i, m])
      x1, y1, x2, y2 = batch["boxes"][i, m]
      assert rows.size and cols.min() + 0.5 >= x1 - 1 and cols.max() + 0.5 <= x2 + 1
      assert rows.min() + 0.5 >= y1 - 1 and rows.max() + 0.5 <= y2 + 1
  batches = list(data.eval_iterator(_cfg(coco_dir), global_batch_size=3))
  assert len(batches) == 1
  batch = batches[0]
  for i in range(3):   # eval: fit, no flip; mask areas scale with the resize
    example = source[i]
    n = len(example["boxes"])
    (h, w), (fh, fw) = example["image"].shape[:2], geometry.fitted_size(example["image"].shape[:2], (64, 64))
    np.testing.assert_allclose(batch["boxes"][i, :n], example["boxes"] * np.tile([fw / w, fh / h], 2), rtol=1e-5)
    np.testing.assert_array_equal(batch["box_classes"][i, :n], example["box_classes"])
    np.testing.assert_array_equal(batch["box_crowd"][i, :n], example["box_crowd"])
    masks = batch["box_masks"][i]
    np.testing.assert_array_equal(masks[:n, :fh, :fw], geometry.resize_box_masks(example["box_masks"], (fh, fw)))
    assert not masks[n:].any() and not masks[:, fh:].any() and not masks[:, :, fw:].any()   # padding is 0


def test_missing_files_are_one_line_errors_naming_the_path(coco_dir, tmp_path):
  with pytest.raises(UserError, match="instances_train2017.json.*official layout") as err:
    data.get_source("coco2017_inst", "train", data_dir=str(tmp_path))
  assert "\n" not in str(err.value)
  (tmp_path / "annotations").mkdir()
  (tmp_path / "annotations" / "instances_val2017.json").write_text(
      (coco_dir / "annotations" / "instances_val2017.json").read_text())
  with pytest.raises(UserError, match="val2017") as err:
    data.get_source("coco2017_inst", "val", data_dir=str(tmp_path))
  assert "\n" not in str(err.value) and "missing" in str(err.value)


def test_registered_dataset_with_its_own_categories(coco_dir):
  info = coco.register_coco_instances(
      "tiny_coco_test", {"val": (str(coco_dir / "annotations" / "instances_val2017.json"),
                                 str(coco_dir / "val2017"))},
      category_ids=(1, 13, 44, 90), class_names=("a", "b", "c", "d"))
  assert info.num_classes == 4 and info.train_split == info.eval_split == "val"
  source = data.get_source("tiny_coco_test", "val")
  assert source[0]["box_classes"].tolist() == [0, 3] and source[1]["box_classes"].tolist() == [2, 1]
  coco.register_coco_instances(
      "tiny_coco_test", {"val": (str(coco_dir / "annotations" / "instances_val2017.json"),
                                 str(coco_dir / "val2017"))}, category_ids=(1, 13), class_names=("a", "b"))
  with pytest.raises(UserError, match="category id 44") as err:
    data.get_source("tiny_coco_test", "val")
  assert "\n" not in str(err.value)
