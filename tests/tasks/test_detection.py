"""The detection task through the one trainer: box batches, the detector's own loss, detections gathered over
the split and scored on the host, jit vs pmap, pictures, errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.common import detection_config
from jaxcnn import data as data_lib
from jaxcnn.errors import UserError
from jaxcnn.eval import detection as det_eval
from jaxcnn.tasks.detection import Detection
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.trainer import evaluate
from jaxcnn.train.writers import read_metrics


def config(**overrides):
  """A tiny RetinaNet (ResNet-18 C3/C4, 32-channel FPN, 1 head conv) on 64x64 digits_det canvases."""
  c = detection_config()
  c.model.name = "retinanet_resnet50_fpn"
  with c.model.unlocked():
    c.model.update(backbone_name="resnet18", returned_layers=(2, 3), fpn_channels=32, extra_blocks="none",
                   anchor_sizes=((16, 20, 25), (32, 40, 50)), head_convs=1)
  c.data.name, c.data.image_size = "digits_det", 64
  c.train.steps, c.train.batch_size, c.train.log_every = 4, 8, 2
  c.eval.every, c.eval.batch_size = 4, 100
  c.checkpoint.every, c.checkpoint.use_async = 0, False
  c.optim.name, c.optim.lr = "adam", 1e-3
  c.detection.pictures = 4
  for key, value in overrides.items():
    section, leaf = key.split("__")
    with c[section].unlocked():
      c[section][leaf] = value
  return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("det"))
  return workdir, train_and_evaluate(config(), workdir, devices=jax.devices()[:1])


def test_run_logs_coco_and_voc_map_and_draws_detections(reference):
  workdir, summary = reference
  assert summary["headline_metric"] == "eval/map"
  for key in ("eval/map", "eval/map50", "eval/map75", "eval/mar_100", "eval/voc_map50", "eval/voc07_map50"):
    assert 0.0 <= summary[key] <= 1.0, key
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if "train/loss" in r][-1]
  assert train["train/loss"] == pytest.approx(train["train/classification"] + train["train/bbox_regression"])
  assert [r["step"] for r in records if "eval/map50" in r] == [4]
  assert json.load(open(os.path.join(workdir, "summary.json")))["eval/map"] == summary["eval/map"]
  assert "detections_step0000004.png" in os.listdir(os.path.join(workdir, "plots"))


def test_host_evaluator_sees_every_test_canvas_once_with_dataset_labels(tmp_path):
  """The eval loop hands the host evaluator all 500 canvases (padding dropped), detections in dataset classes,
  and the scores equal the official evaluator's on a direct pass over the split."""
  c = config()
  c.model.score_thresh = 0.001  # an untrained head scores ~0.01 (the prior): let detections through
  task = Detection(c, data_lib.dataset_info("digits_det"))
  batch = {k: jnp.asarray(v) for k, v in next(iter(data_lib.eval_iterator(c.data, global_batch_size=2))).items()}
  variables = task.init(jax.random.PRNGKey(0), batch)
  seen = {}

  def host_eval(outputs):
    seen.update(outputs)
    return Detection.host_eval(task, outputs)

  task.host_eval = host_eval
  step = jax.jit(task.eval_step)
  batches = data_lib.eval_iterator(c.data, global_batch_size=96)  # 500 = 5 x 96 + 20 real + 76 padding
  metrics = evaluate(task, batches, lambda b: jax.device_get(step(variables, b)))
  assert seen["boxes"].shape == (500, task.model.detections_per_img, 4)
  assert seen["gt_boxes"].shape == (500, 4, 4)
  labels = seen["labels"][seen["valid"]]
  assert labels.size and labels.min() >= 0 and labels.max() <= 9   # model labels 1..10 shifted to classes
  truth = np.concatenate([np.asarray(b["box_classes"])[np.asarray(b["mask"]) > 0] for b in batches])
  np.testing.assert_array_equal(seen["gt_labels"], truth)
  detections = {k: seen[k] for k in ("boxes", "scores", "labels", "valid")}
  ground_truth = {"boxes": seen["gt_boxes"], "labels": seen["gt_labels"], "valid": seen["gt_valid"]}
  direct = det_eval.coco_metrics(detections, ground_truth, 10)
  assert metrics["eval/map"] == pytest.approx(direct["map"], nan_ok=True)
  assert metrics["eval/map50"] == pytest.approx(direct["map50"], nan_ok=True)


def test_targets_put_dataset_classes_in_torchvisions_label_space():
  batch = {"boxes": np.zeros((1, 2, 4), np.float32), "box_classes": np.array([[0, 9]]),
           "boxes_valid": np.array([[True, False]])}
  targets = Detection.targets(batch)
  np.testing.assert_array_equal(targets["labels"], [[1, 10]])
  np.testing.assert_array_equal(targets["valid"], [[True, False]])


@pytest.mark.slow
def test_pmap_over_two_devices_follows_the_jit_run(reference, tmp_path):
  """The loss normalisers and BatchNorm statistics are global: pmap over 2 devices logs the one-device run's losses."""
  workdir, summary = reference
  pmapped = train_and_evaluate(config(train__parallel="pmap", detection__pictures=0), str(tmp_path),
                               devices=jax.devices()[:2])

  def losses(path):
    return [r["train/loss"] for r in read_metrics(os.path.join(path, "metrics.jsonl")) if "train/loss" in r]

  np.testing.assert_allclose(losses(str(tmp_path)), losses(workdir), rtol=2e-3)
  assert pmapped["eval/map50"] == pytest.approx(summary["eval/map50"], abs=0.02)


@pytest.mark.parametrize("overrides, match", [
    ({"data__name": "digits", "data__image_size": 8}, "needs a dataset with a 'boxes' field"),
    ({"model__name": "resnet18"}, "is not a detector"),
])
def test_bad_setups_are_one_line_errors(overrides, match):
  c = config()
  if "model__name" in overrides:
    c.model = type(c.model)({"name": overrides.pop("model__name")})
  for key, value in overrides.items():
    section, leaf = key.split("__")
    c[section][leaf] = value
  with pytest.raises(UserError, match=match) as err:
    Detection(c, data_lib.dataset_info(c.data.name))
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("resize, shorter, expected", [
    ("fit", 0, [(2.0, 2.0), (1.0, 1.0)]),       # 128x64 fitted into 64x64 -> 64x32; 64x64 unchanged
    ("stretch", 0, [(2.0, 1.0), (1.0, 1.0)]),   # stretched to 64x64 whatever the aspect
    ("fit", 16, [(4.0, 4.0), (4.0, 4.0)]),      # shorter side capped at 16: 32x16 and 16x16
])
def test_source_frame_maps_batch_pixels_back_to_each_source_image(resize, shorter, expected):
  c = config()
  with c.data.unlocked():
    c.data.resize, c.data.resize_shorter = resize, shorter
  task = Detection(c, data_lib.dataset_info("digits_det"))
  np.testing.assert_allclose(task.source_frame(np.array([[128, 64], [64, 64]])), expected)
