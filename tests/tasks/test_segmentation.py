"""The segmentation task through the one trainer: dict batches, array-valued eval sums, host evaluators,
1 vs 8 devices and jit vs pmap, binary mode, non-square images, overlays, errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.common import segmentation_config
from jaxcnn import data as data_lib
from jaxcnn.data import sources
from jaxcnn.data.canvas import SEG_INFO
from jaxcnn.errors import UserError
from jaxcnn.tasks.segmentation import Segmentation
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.trainer import evaluate
from jaxcnn.train.writers import read_metrics


def config(**overrides):
  """A tiny U-Net on 32x32 digits_seg canvases: cheap to compile, enough to compare runs."""
  c = segmentation_config()
  c.model.name = "unet"
  with c.model.unlocked():
    c.model.update(base=4, depth=2, batch_norm=True)
  c.data.name, c.data.image_size = "digits_seg", 32
  c.train.steps, c.train.batch_size, c.train.log_every = 6, 16, 2
  c.eval.every, c.eval.batch_size = 6, 64
  c.checkpoint.every, c.checkpoint.use_async = 0, False
  c.optim.name, c.optim.lr = "adam", 3e-3
  c.segmentation.overlays = 4
  for key, value in overrides.items():
    section, leaf = key.split("__")
    with c[section].unlocked():
      c[section][leaf] = value
  return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("seg"))
  return workdir, train_and_evaluate(config(), workdir, devices=jax.devices()[:1])


def test_run_writes_miou_overlays_and_names_its_headline(reference):
  workdir, summary = reference
  assert summary["headline_metric"] == "eval/miou"
  for key in ("eval/miou", "eval/pixel_accuracy", "eval/mean_class_accuracy", "eval/loss", "eval/iou/background"):
    assert np.isfinite(summary[key]), key
  assert 0.0 <= summary["eval/miou"] <= 1.0
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk["eval/miou"] == summary["eval/miou"]
  assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval/miou" in r] == [6]
  plots = os.listdir(os.path.join(workdir, "plots"))
  assert {"segmentation_truth.png", "segmentation_step0000006.png"} <= set(plots)


def test_eval_confusion_equals_a_numpy_count_over_the_split(reference):
  """The trainer's summed confusion matrix (padding dropped, ignore label skipped) equals a direct count."""
  workdir, summary = reference
  task = Segmentation(config(), data_lib.dataset_info("digits_seg"))
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  variables = {"params": state["params"], **state["model_state"]}
  cm = np.zeros((11, 11), np.int64)
  batches = data_lib.eval_iterator(config().data, global_batch_size=64)
  for batch in batches:
    logits = task.model.apply(variables, batch["image"], train=False)["out"]
    pred, label = np.argmax(np.asarray(logits), -1), np.asarray(batch["segmentation"])
    real = (np.asarray(batch["mask"]) > 0)[:, None, None] & (label != 255)
    np.add.at(cm, (label[real], pred[real]), 1)
  assert cm.sum() > 0
  tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
  present = union > 0
  np.testing.assert_allclose(summary["eval/miou"], np.mean(tp[present] / union[present]), rtol=1e-9)
  np.testing.assert_allclose(summary["eval/pixel_accuracy"], tp.sum() / cm.sum(), rtol=1e-9)


def test_eight_devices_and_pmap_give_the_same_run(reference, tmp_path):
  _, ref = reference
  jit8 = train_and_evaluate(config(), str(tmp_path / "jit8"))
  pmap = train_and_evaluate(config(train__parallel="pmap"), str(tmp_path / "pmap"), devices=jax.devices()[:4])
  for other in (jit8, pmap):
    np.testing.assert_allclose(other["eval/loss"], ref["eval/loss"], rtol=2e-3)
    assert abs(other["eval/pixel_accuracy"] - ref["eval/pixel_accuracy"]) < 2e-3


def test_non_square_images_build_from_the_pipeline_spec(tmp_path):
  summary = train_and_evaluate(config(data__image_size=(32, 48), train__steps=2, eval__every=2),
                               str(tmp_path), devices=jax.devices()[:1])
  assert np.isfinite(summary["eval/miou"])


def _register_foreground_digits():
  """digits_seg as background / digit (2 classes), registered like a user's own dataset."""
  if "digits_fg" in data_lib.dataset_names():
    return
  info = sources.DatasetInfo("digits_fg", 2, SEG_INFO.image_shape, False, "train", "test", None,
                             fields={"image": "image", "segmentation": "mask"}, class_names=("background", "digit"))

  class Split:
    def __init__(self, split):
      self.source = sources.get_source("digits_seg", split)

    def __len__(self):
      return len(self.source)

    def __getitem__(self, i):
      example = self.source[i]
      return {"image": example["image"], "segmentation": (np.asarray(example["segmentation"]) > 0).astype(np.uint8)}

  sources.register_source(info, lambda split, data_dir: Split(split))


def test_binary_mode_trains_a_one_logit_model_with_bce_dice(tmp_path):
  _register_foreground_digits()
  c = config(data__name="digits_fg", segmentation__binary=True, segmentation__loss="bce_dice", train__steps=20,
             eval__every=20, optim__lr=1e-2)
  summary = train_and_evaluate(c, str(tmp_path), devices=jax.devices()[:1])
  assert summary["eval/foreground_dice"] > 0.5 and summary["eval/foreground_iou"] > 0.3  # learned, not chance
  assert summary["eval/miou"] > 0.5


def test_aux_head_adds_its_weighted_loss():
  c = config()
  c.model.name = "fcn_resnet50"
  with c.model.unlocked():
    for k in ("base", "depth", "batch_norm"):
      del c.model[k]
    c.model.backbone_name, c.model.aux_loss = "resnet18", True
  task = Segmentation(c, data_lib.dataset_info("digits_seg"))
  batch = {"image": jnp.ones((2, 32, 32, 1)), "segmentation": jnp.ones((2, 32, 32), jnp.int32)}
  variables = task.init(jax.random.key(0), batch)
  params = variables.pop("params")
  loss, (_, metrics) = jax.jit(task.loss)(params, variables, batch, jax.random.key(1))
  np.testing.assert_allclose(loss, metrics["train/main_loss"] + 0.5 * metrics["train/aux_loss"], rtol=1e-6)


def test_the_eval_loop_sums_arrays_and_hands_per_example_outputs_to_the_host_evaluator():
  class Task:
    def eval_metrics(self, sums):
      return {"eval/total": sums["matrix"]}

    def host_eval(self, outputs):
      return {"eval/ids": outputs["id"].tolist(), "eval/keys": sorted(outputs)}

  batches = [{"m": np.eye(2, dtype=np.int32), "id": np.array([0, 1]), "mask": np.array([1.0, 1.0])},
             {"m": 2 * np.eye(2, dtype=np.int32), "id": np.array([2, -1]), "mask": np.array([1.0, 0.0])}]
  out = evaluate(Task(), batches, lambda b: {"matrix": b["m"], "per_example/id": b["id"],
                                             "per_example/mask": b["mask"]})
  np.testing.assert_array_equal(out["eval/total"], 3 * np.eye(2))
  assert out["eval/ids"] == [0, 1, 2]  # the padding example is dropped
  assert out["eval/keys"] == ["id", "mask"]


@pytest.mark.parametrize("overrides,match", [
    ({"segmentation__loss": "focal"}, "unknown segmentation.loss 'focal'"),
    ({"segmentation__binary": True, "segmentation__loss": "bce"}, "needs a dataset of 2 classes"),
    ({"segmentation__loss": "dice"}, "goes with binary=True"),
    ({"segmentation__class_weights": (1.0, 2.0)}, "needs 11 non-negative numbers"),
    ({"model__output_stride": 12}, "output_stride"),
])
def test_bad_options_are_one_line_errors(overrides, match):
  c = config(**overrides)
  if "model__output_stride" in overrides:
    c.model.name = "deeplabv3_resnet50"
    with c.model.unlocked():
      for k in ("base", "depth", "batch_norm"):
        del c.model[k]
  with pytest.raises(UserError, match=match):
    Segmentation(c, data_lib.dataset_info("digits_seg"))
