"""Detection datasets: registration, tfds examples -> pixel boxes (through tfds.testing.mock_data), the checks
where boxes enter the pipeline, VOC07+12 joined, COCO's label maps, failing fast offline."""
import logging
import time

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.object_detection import voc as tfds_voc
from tensorflow_datasets.testing import mocking
from torchvision.models import _meta

from jaxcnn import data
from jaxcnn.data import coco, detection, prepare, voc_det
from jaxcnn.errors import UserError


def _cfg(name, **overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name=name, normalize="unit"))
  cfg.update(overrides)
  return cfg


def _tfds_example(h, w, boxes, labels, flags, flag_key, code=0):
  """A decoded tfds voc/coco example with pixel boxes `boxes` (x1, y1, x2, y2) on an h x w image of value `code`."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  bbox = boxes[:, [1, 0, 3, 2]] / np.array([h, w, h, w], np.float32)
  n = len(boxes)
  objects = {"bbox": bbox.astype(np.float32), "label": np.asarray(labels, np.int64).reshape(n),
             flag_key: np.asarray(flags, bool).reshape(n)}
  return {"image": np.full((h, w, 3), code, np.uint8), "image/filename": f"{code}.jpg", "objects": objects}


def _mock_splits(splits):
  """tfds.testing.mock_data serving `splits[(config, split)]` (lists of examples); 'a+b' concatenates."""
  def as_data_source(builder, split, decoders=None, deserialize_method=None, **unused):
    return [e for part in split.split("+") for e in splits[(builder.builder_config.name, part.strip())]]
  return tfds.testing.mock_data(as_data_source_fn=as_data_source)


# ----------------------------------------------------------------------------- registry and label spaces


def test_detection_datasets_are_registered():
  for name, tfds_name, k, train, evaluate, splits in [
      ("voc2007_det", "voc/2007", 20, "train+validation", "test", ("train", "validation", "test")),
      ("voc2012_det", "voc/2012", 20, "train", "validation", ("train", "validation")),
      ("voc0712_det", None, 20, "trainval", "test", ("trainval", "test")),
      ("coco2017_det", "coco/2017", 80, "train", "validation", ("train", "validation"))]:
    info = data.dataset_info(name)
    assert (info.tfds_name, info.num_classes, info.train_split, info.eval_split, info.splits) == (
        tfds_name, k, train, evaluate, splits)
    assert info.boxes_field == "boxes" and info.field_kinds["box_classes"] == "box_class" and info.max_boxes == 100
    assert len(info.class_names) == k and not info.embedded
  assert data.dataset_info("voc2007_det").field_kinds["box_difficult"] == "box_flag"
  assert data.dataset_info("coco2017_det").field_kinds["box_crowd"] == "box_flag"
  assert voc_det.CLASS_NAMES == tfds_voc._VOC_LABELS   # pylint: disable=protected-access  (tfds's label order)
  assert data.sources.joined_parts("voc0712_det") == {
      "trainval": (("voc2007_det", "train+validation"), ("voc2012_det", "train+validation")),
      "test": (("voc2007_det", "test"),)}
  assert data.dataset_info("digits_det").max_boxes == 4


def test_coco_label_maps_match_torchvision():
  names = _meta._COCO_CATEGORIES   # pylint: disable=protected-access  (torchvision's 91-entry COCO label space)
  assert len(coco.CLASS_NAMES) == len(coco.CATEGORY_IDS) == 80 and coco.NUM_CATEGORY_IDS == len(names) == 91
  assert [names[i] for i in coco.CATEGORY_IDS] == list(coco.CLASS_NAMES)
  unused = [i for i in range(1, 91) if i not in coco.CATEGORY_IDS]
  assert tuple(unused) == coco.UNUSED_IDS and all(names[i] == "N/A" for i in unused)
  assert (coco.CATEGORY_IDS[:3].tolist(), coco.CATEGORY_IDS[-1]) == ([1, 2, 3], 90)
  np.testing.assert_array_equal(coco.contiguous_class(coco.category_id(np.arange(80))), np.arange(80))
  assert coco.category_id(11) == 13 and coco.contiguous_class(13) == 11
  np.testing.assert_array_equal(coco.contiguous_class([0, 12, 83, 90]), [-1, -1, -1, 79])
  with pytest.raises(UserError, match="COCO contiguous classes are 0..79, got 80"):
    coco.category_id([3, 80])
  with pytest.raises(UserError, match="COCO category ids are 0..90, got 91"):
    coco.contiguous_class(91)


# ----------------------------------------------------------------------------- tfds examples -> batches


def test_tfds_boxes_become_pixel_boxes_in_the_batches():
  """Normalised (ymin, xmin, ymax, xmax) -> xyxy pixels; eval fits 20 x 30 images into 40 x 60 (factor 2)."""
  examples = [_tfds_example(20, 30, [[3, 2, 10, 12], [0, 0, 30, 20]], [4, 19], [False, True], "is_difficult", 1),
              _tfds_example(20, 30, [[5, 5, 6, 7]], [0], [True], "is_difficult", 2)]
  cfg = _cfg("voc2007_det", image_size=(40, 60), max_boxes=3, train_split="test")
  with _mock_splits({("2007", "test"): examples}):
    source = data.get_source("voc2007_det", "test")
    first = source[0]
    batches = list(data.eval_iterator(cfg, global_batch_size=4))
    spec = data.element_spec(cfg, 4)
  np.testing.assert_allclose(first["boxes"], [[3, 2, 10, 12], [0, 0, 30, 20]], atol=1e-4)
  assert first["box_classes"].tolist() == [4, 19] and first["box_difficult"].tolist() == [False, True]
  assert len(batches) == 1
  batch = batches[0]
  assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items() if k != "mask"}
  assert set(batch) == {"image", "boxes", "boxes_valid", "box_classes", "box_difficult", "source_hw", "mask"}
  np.testing.assert_allclose(batch["boxes"][0, :2], [[6, 4, 20, 24], [0, 0, 60, 40]], atol=1e-3)
  np.testing.assert_allclose(batch["boxes"][1, 0], [10, 10, 12, 14], atol=1e-3)
  np.testing.assert_array_equal(batch["boxes_valid"], [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch["box_classes"][:2], [[4, 19, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch["box_difficult"][:2], [[0, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(batch["source_hw"], [[20, 30], [20, 30], [0, 0], [0, 0]])
  np.testing.assert_array_equal(batch["mask"], [1, 1, 0, 0])
  np.testing.assert_allclose(batch["image"][1, :40, :60], 2 / 255, atol=1e-6)


def test_boxes_are_clipped_degenerate_dropped_with_a_count_and_empty_images_are_valid(caplog):
  examples = [
      _tfds_example(20, 30, [[-4, 2, 10, 25], [28, 1, 35, 9]], [1, 2], [0, 1], "is_crowd"),   # clipped
      _tfds_example(20, 30, [[5, 5, 5, 9], [3, 3, 8, 8], [9, 2, 4, 6], [40, 3, 50, 8]], [3, 4, 5, 6],
                    [0, 1, 0, 0], "is_crowd"),   # zero width, fine, x2 < x1, outside (no area once clipped)
      _tfds_example(20, 30, [], [], [], "is_crowd"),                                            # no boxes
  ]
  cfg = _cfg("coco2017_det", image_size=(20, 30), max_boxes=4)
  caplog.set_level(logging.WARNING, logger="jaxcnn")
  with _mock_splits({("2017", "validation"): examples}):
    batch = next(iter(data.eval_iterator(cfg, global_batch_size=3)))
  np.testing.assert_allclose(batch["boxes"][0, :2], [[0, 2, 10, 20], [28, 1, 30, 9]], atol=1e-4)
  np.testing.assert_array_equal(batch["boxes_valid"][0], [1, 1, 0, 0])
  np.testing.assert_array_equal(batch["box_crowd"][0], [0, 1, 0, 0])
  np.testing.assert_allclose(batch["boxes"][1, 0], [3, 3, 8, 8], atol=1e-4)   # the one box with area, first
  np.testing.assert_array_equal(batch["boxes_valid"][1], [1, 0, 0, 0])
  assert batch["box_classes"][1, 0] == 4 and batch["box_crowd"][1].tolist() == [True, False, False, False]
  assert not batch["boxes_valid"][2].any() and not batch["boxes"][2].any() and not batch["box_crowd"][2].any()
  warnings = [r.getMessage() for r in caplog.records if "without area" in r.getMessage()]
  assert len(warnings) == 1 and "dropped 3 box(es)" in warnings[0] and warnings[0].endswith("3 dropped so far")
  assert "example 1 of tfds coco2017_det:validation" in warnings[0]


@pytest.mark.parametrize("boxes, labels, max_boxes, message", [
    ([[1, 1, 5, 5], [2, 2, 6, 6]], [3, 20], 4,
     r"^example 1 of tfds voc2007_det:test \(dataset 'voc2007_det'\): 'box_classes' holds class 20; allowed: "
     r"0..19 \(20 classes\)"),
    ([[1, 1, 5, 5]] * 5, [0] * 5, 4,
     r"^example 1 of tfds voc2007_det:test \(dataset 'voc2007_det'\) has 5 boxes, more than the 4 allowed "
     r"\(data.max_boxes\); raise data.max_boxes"),
    ([[1, np.nan, 5, 5]], [0], 4, r"example 1 of .*: box 0 has coordinates \[1.0, nan, 5.0, 5.0\]; want finite"),
])
def test_bad_boxes_are_one_line_errors_naming_the_example(boxes, labels, max_boxes, message):
  examples = [_tfds_example(20, 30, [[1, 1, 4, 4]], [0], [0], "is_difficult"),
              _tfds_example(20, 30, boxes, labels, [0] * len(labels), "is_difficult")]
  with _mock_splits({("2007", "test"): examples}):
    with pytest.raises(UserError, match=message) as err:
      list(data.eval_iterator(_cfg("voc2007_det", image_size=32, max_boxes=max_boxes), global_batch_size=2))
  assert "\n" not in str(err.value)


def test_digits_det_max_boxes_pads_or_refuses():
  batch = next(iter(data.eval_iterator(_cfg("digits_det", max_boxes=6), global_batch_size=4)))
  test = data.canvas.digits_canvas_splits()["test"]
  assert batch["boxes"].shape == (4, 6, 4) and batch["box_classes"].shape == (4, 6)
  np.testing.assert_array_equal(batch["boxes"][:, :4], test["boxes"][:4])
  np.testing.assert_array_equal(batch["boxes_valid"][:, :4], test["valid"][:4])
  np.testing.assert_array_equal(batch["box_classes"][:, :4], np.where(test["valid"][:4], test["classes"][:4], 0))
  assert not batch["boxes_valid"][:, 4:].any()
  assert data.element_spec(_cfg("digits_det"), 2)["boxes"].shape == (2, 4, 4)   # the dataset's default: 4
  crowded = int(np.argmax(test["valid"].sum(1) == 4))
  with pytest.raises(UserError, match=rf"example {crowded} of digits_det:test \(dataset 'digits_det'\) has 4 "
                                      r"boxes, more than the 3 allowed \(data.max_boxes\)"):
    list(data.eval_iterator(_cfg("digits_det", max_boxes=3), global_batch_size=crowded + 1))


def test_voc0712_joins_four_splits_in_order():
  parts = {(config, split): [_tfds_example(8, 8, [[1, 1, 4, 4]], [c % 20], [0], "is_difficult", c)
                             for c in range(base, base + 2 + i)]
           for i, (config, split, base) in enumerate([("2007", "train", 10), ("2007", "validation", 20),
                                                       ("2012", "train", 30), ("2012", "validation", 40),
                                                       ("2007", "test", 50)])}
  with _mock_splits(parts):
    trainval = data.get_source("voc0712_det", "trainval")
    test = data.get_source("voc0712_det", "test")
    sliced = data.get_source("voc0712_det", "trainval[3:6]+test[:1]")
    codes = lambda source: [int(source[i]["image"][0, 0, 0]) for i in range(len(source))]
    assert codes(trainval) == [10, 11, 20, 21, 22, 30, 31, 32, 33, 40, 41, 42, 43, 44]
    assert codes(test) == [50, 51, 52, 53, 54, 55]
    assert codes(sliced) == [21, 22, 30, 50]
    assert "tfds voc2012_det:train+validation" in data.sources.describe_example(trainval, 6)
    batch = next(data.train_iterator(_cfg("voc0712_det", image_size=16, augment="flip"), global_batch_size=4,
                                     seed=0))
  assert batch["boxes"].shape == (4, 100, 4) and batch["boxes_valid"].sum() == 4


def test_random_mock_examples_through_the_detection_pipelines():
  """tfds's random examples (constant sequence lengths, random boxes: many degenerate) in train and eval."""
  def as_data_source(builder, split, decoders=None, deserialize_method=None, **unused):
    generator = mocking.RandomFakeGenerator(builder.info.features, 12, constant_dynamic_shape=True)
    return [generator[i] for i in range(12)]
  cfg = _cfg("coco2017_det", image_size=32, resize="stretch", max_boxes=10,
             augment="photometric,zoom_out,iou_crop,flip")
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    train = [next(it) for it in [data.train_iterator(cfg, global_batch_size=6, seed=1)] for _ in range(2)]
    evals = list(data.eval_iterator(cfg, global_batch_size=8))
    spec = data.element_spec(cfg, 6)
  for batch in train + evals:
    chex.assert_shape([batch["image"], batch["boxes"], batch["boxes_valid"], batch["box_classes"]],
                      [(None, 32, 32, 3), (None, 10, 4), (None, 10), (None, 10)])
    boxes = batch["boxes"][batch["boxes_valid"]]
    assert len(boxes) and (boxes >= 0).all() and (boxes <= 32).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert batch["box_classes"].min() >= 0 and batch["box_classes"].max() < 80
  assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {k: (v.shape, v.dtype) for k, v in train[0].items()}
  np.testing.assert_array_equal(np.concatenate([b["source_hw"] for b in evals])[:12], [[10, 10]] * 12)


def test_plain_mock_data_is_refused_in_one_line():
  """tfds's default mock draws every sequence's length apart: boxes without labels, caught where they enter."""
  with tfds.testing.mock_data(num_examples=3):
    with pytest.raises(UserError, match=r"example 0 of tfds voc/2007: its objects have different counts per "
                                        r"field \{'boxes': \d+, 'box_classes': \d+, 'box_difficult': \d+\}") as err:
      list(data.eval_iterator(_cfg("voc2007_det", image_size=32), global_batch_size=3))
  assert "\n" not in str(err.value)


def test_tfds_objects_without_flags_or_objects():
  example = {"image": np.zeros((4, 6), np.uint8), "objects": {}}
  out = detection.tfds_objects(example, "x")
  assert out["image"].shape == (4, 6, 1) and out["boxes"].shape == (0, 4) and out["box_classes"].shape == (0,)


# ----------------------------------------------------------------------------- offline


@pytest.fixture
def no_network(monkeypatch):
  def refuse(address, timeout=None):
    raise OSError("no network in this test")
  monkeypatch.setattr(prepare.socket, "create_connection", refuse)

  def no_download(*args, **kwargs):
    raise AssertionError("tfds tried to download")
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_download)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_download)


@pytest.mark.parametrize("name, needed, download", [
    ("coco2017_det", "coco2017_det", False), ("coco2017_det", "coco2017_det", True),
    ("voc0712_det", "voc2007_det", False), ("voc2012_det", "voc2012_det", True)])
def test_missing_detection_datasets_fail_fast_in_one_line(tmp_path, no_network, name, needed, download):
  start = time.monotonic()
  with pytest.raises(UserError) as err:
    data.get_source(name, data.dataset_info(name).train_split, data_dir=str(tmp_path), download=download)
  assert time.monotonic() - start < 10
  message = str(err.value)
  assert "\n" not in message and f"dataset '{needed}' is not prepared under {tmp_path}" in message
  assert f"python -m jaxcnn.data.prepare {needed}" in message
  assert ("no connection to" if download else "data.download is False") in message


def test_prepare_cli_prepares_each_part_of_a_joined_dataset(tmp_path, no_network, capsys):
  assert prepare.joined_tfds_names("voc0712_det") == ["voc2007_det", "voc2012_det"]
  assert prepare.main(["voc0712_det", f"--data_dir={tmp_path}"]) == 2
  assert "error: dataset 'voc2007_det' is not prepared" in capsys.readouterr().err
  with pytest.raises(UserError, match="dataset 'voc0712_det' is not a tfds dataset; prepare voc2007_det and "
                                      "voc2012_det instead"):
    prepare.prepare("voc0712_det", data_dir=str(tmp_path))
