"""python -m jaxcnn.bench prints the agreed JSON keys with sane values."""
import json

import numpy as np
import pytest

from jaxcnn import bench


def test_bench_prints_one_json_line(capsys):
  assert bench.main(["--model=lenet5_modern", "--batch=8", "--image-size=28", "--channels=1", "--steps=2",
                     "--warmup=0"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert r["task"] == "classification"  # inferred: lenet5_modern returns one logits array
  for key in ("compile_s", "step_ms_median", "images_per_s", "flops_per_step", "flops_per_s"):
    assert r[key] > 0, key
  # Forward + backward of a small CNN: more than the 2x forward conv FLOPs XLA counts for 8 images at least.
  assert r["flops_per_step"] > 8 * 2 * 28 * 28 * 25 * 6
  assert abs(r["images_per_s"] - 8 / (r["step_ms_median"] / 1e3)) < 1e-3 * r["images_per_s"] + 0.1


def test_bench_rejects_unknown_model(capsys):
  assert bench.main(["--model=nosuchnet"]) == 2
  assert "unknown model 'nosuchnet'" in capsys.readouterr().err


def test_bench_rejects_bad_counts(capsys):
  assert bench.main(["--model=lenet5_modern", "--steps=0"]) == 2
  assert "--steps (>= 1)" in capsys.readouterr().err


SEG_FLAGS = ["--model=unet", "--batch=2", "--image-size=16", "--num-classes=3", "--option.base=4",
             "--option.depth=2", "--steps=1", "--warmup=0"]


def test_segmentation_model_times_the_segmentation_step(capsys):
  # unet returns {'out': ...}: the task is inferred; the batch has per-pixel labels with ignored pixels.
  assert bench.main(SEG_FLAGS) == 0
  r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert r["task"] == "segmentation" and r["images_per_s"] > 0 and r["flops_per_step"] > 0

  args, extra = bench.parse(SEG_FLAGS)
  name, task, _, state, batch = bench.setup(args, bench._parse_options(extra))
  assert name == "segmentation" and sorted(batch) == ["image", "segmentation"]
  labels = np.asarray(batch["segmentation"])
  assert batch["image"].dtype == np.float32 and labels.dtype == np.int32 and labels.shape == (2, 16, 16)
  ignored = labels == 255
  assert 0 < ignored.mean() < 0.15 and set(np.unique(labels[~ignored])) == {0, 1, 2}
  # The reported loss (one step, no warmup: the loss before the update) is the per-pixel cross-entropy
  # over the labelled pixels only (this unet has no BatchNorm or dropout: train and eval agree).
  logits = np.asarray(task.model.apply({"params": state.params, **state.model_state}, batch["image"])["out"])
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, np.where(ignored, 0, labels)[..., None], -1)[..., 0]
  np.testing.assert_allclose(r["loss"], nll[~ignored].mean(), rtol=1e-5)
  assert abs(r["loss"] - nll.mean()) > 1e-6  # the ignored pixels would change it



@pytest.mark.slow  # compiles a YOLOX step (~40 s); the classification and contrastive bench tests stay in CI
def test_detector_times_the_detection_step(capsys):
  # A detector (detection_loss + postprocess) is inferred; the batch has padded boxes, their validity and classes.
  flags = ["--model=yolox_nano", "--option.width=0.125", "--batch=2", "--image-size=64", "--num-classes=3",
           "--steps=1", "--warmup=0"]
  assert bench.main(flags) == 0
  r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert r["task"] == "detection" and r["images_per_s"] > 0 and r["compile_s"] > 0
  batch = bench.synthetic_batch("detection", 4, 64, 3, 3)
  assert sorted(batch) == ["box_classes", "boxes", "boxes_valid", "image"]
  boxes, valid = np.asarray(batch["boxes"]), np.asarray(batch["boxes_valid"])
  assert (boxes[..., 2:] > boxes[..., :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
  assert valid[1].all() and not valid[0, -2:].any()
  assert np.asarray(batch["box_classes"]).max() < 3


def test_image_text_model_gets_the_contrastive_step():
  # clip_tiny has encode_text: the contrastive task is inferred; captions are token rows ending in the end token.
  args, extra = bench.parse(["--model=clip_tiny", "--batch=4", "--image-size=32"])
  name, task, _, state, batch = bench.setup(args, bench._parse_options(extra))
  assert name == "contrastive" and sorted(batch) == ["captions", "image"]
  captions = np.asarray(batch["captions"])
  assert captions.shape == (4, 1, 32) and captions.dtype == np.int32
  lengths = (captions[:, 0] != 0).sum(-1)
  rows = captions[:, 0]
  assert (rows[:, 0] == 49406).all() and (rows[np.arange(4), lengths - 1] == 49407).all()
  assert (rows.argmax(-1) == lengths - 1).all()  # the text tower pools at the end token
  assert "logit_scale" in state.params
