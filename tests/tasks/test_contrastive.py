"""The contrastive task through the one trainer: zero-shot accuracy and recall against a direct computation, the
classifier computed once per evaluation (jit; and pmap in the slow set), 1 vs 8 devices vs pmap (slow), SigLIP
with a chunked loss, LiT, errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs.clip_digits import contrastive_digits_config
from jaxcnn import data as data_lib
from jaxcnn.errors import UserError
from jaxcnn.eval import retrieval, templates
from jaxcnn.tasks.contrastive import Contrastive
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.writers import read_metrics

TINY = dict(embed_dim=32, image_size=16, vision_layers=1, vision_width=32, vision_patch_size=8, vision_head_width=16,
            context_length=16, text_width=32, text_heads=2, text_layers=1)


def config(loss="clip", **overrides):
  c = contrastive_digits_config(loss)
  c.model.name = "clip" if loss == "clip" else "clip_tiny_siglip"
  with c.model.unlocked():
    c.model.update(TINY)
  c.data.image_size, c.data.context_length, c.data.num_threads = 16, 16, 0
  c.train.steps, c.train.batch_size, c.train.log_every = 4, 16, 1
  c.eval.every, c.eval.batch_size = 2, 128
  c.checkpoint.every, c.checkpoint.use_async = 0, False
  c.optim.warmup_steps = 0
  for key, value in overrides.items():
    section, leaf = key.split("__")
    with c[section].unlocked():
      c[section][leaf] = value
  return c


def restore(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


class Counting(Contrastive):
  """Counts executions of the zero-shot classifier (not traces) with a host callback."""
  calls = []

  def classifier(self, variables):
    out = super().classifier(variables)
    jax.debug.callback(lambda: Counting.calls.append(1))
    return out


def counted_run(c, workdir, devices):
  """(summary, train losses, classifier executions) of a run with the Counting task."""
  from jaxcnn import tasks
  saved = tasks._TASKS["contrastive"]
  tasks._TASKS["contrastive"] = f"{__name__}:Counting"
  Counting.calls.clear()
  try:
    summary = train_and_evaluate(c, workdir, devices=jax.devices()[:devices])
  finally:
    tasks._TASKS["contrastive"] = saved
  losses = [r["train/loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  return summary, losses, len(Counting.calls)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("clip"))
  return (workdir,) + counted_run(config(), workdir, 1)


def test_run_reports_zero_shot_and_recall_against_a_direct_computation(reference):
  workdir, summary, _, _ = reference
  assert summary["headline_metric"] == "eval/zeroshot_accuracy"
  assert json.load(open(os.path.join(workdir, "summary.json")))["eval/zeroshot_accuracy"] == \
      summary["eval/zeroshot_accuracy"]
  assert {"zeroshot_confusion_step0000002.png", "zeroshot_confusion_step0000004.png"} <= \
      set(os.listdir(os.path.join(workdir, "plots")))
  losses = [r["train/loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  # Recompute from the checkpoint: the CLIP paper's ensembling (normalise, average, renormalise), by hand.
  task = Contrastive(config(), data_lib.dataset_info("digits_captions"))
  variables = {"params": restore(workdir, 4)["params"]}
  from jaxcnn.data import tokenizer
  class_emb = []
  for name in task.class_names:
    tokens = tokenizer.tokenize([t.format(name) for t in templates.DIGITS_TEMPLATES], 16)
    e = np.array(task.model.apply(variables, tokens, method="encode_text"))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    class_emb.append(e.mean(0) / np.linalg.norm(e.mean(0)))
  class_emb = np.stack(class_emb)
  images, texts, valid, labels = [], [], [], []
  for batch in data_lib.eval_iterator(config().data, global_batch_size=128):
    keep = batch["mask"] > 0
    img = np.array(task.model.apply(variables, batch["image"][keep], method="encode_image"))
    images.append(img / np.linalg.norm(img, axis=-1, keepdims=True))
    caps = batch["captions"][keep]
    txt = np.array(task.model.apply(variables, caps.reshape(-1, 16), method="encode_text"))
    texts.append((txt / np.linalg.norm(txt, axis=-1, keepdims=True)).reshape(caps.shape[0], caps.shape[1], -1))
    valid.append((caps != 0).any(-1))
    labels.append(batch["label"][keep])
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert len(images) == 360
  accuracy = np.mean(np.argmax(images @ class_emb.T, -1) == labels)
  np.testing.assert_allclose(summary["eval/zeroshot_accuracy"], accuracy, atol=1 / 360 + 1e-9)
  recall = retrieval.recall_at_k(images, np.concatenate(texts), np.concatenate(valid))
  for key, value in recall.items():
    np.testing.assert_allclose(summary[f"eval/{key}"], value, atol=2e-3)


def check_devices_agree(reference, tmp_path, runs):
  _, ref, ref_losses, ref_calls = reference
  # 2 evaluations of 3 eval batches each (360 / 128): one classifier per evaluation (per device on pmap)
  assert ref_calls == 2
  for name, devices, parallel in runs:
    summary, losses, calls = counted_run(config(train__parallel=parallel), str(tmp_path / name), devices)
    assert calls == 2 * (devices if parallel == "pmap" else 1), name
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-4, err_msg=name)   # the same captions drawn
    assert abs(summary["eval/zeroshot_accuracy"] - ref["eval/zeroshot_accuracy"]) <= 2 / 360, name


def test_classifier_once_per_evaluation(reference):
  assert reference[3] == 2   # 2 evaluations of 3 eval batches each (360 / 128)


@pytest.mark.slow
def test_eight_devices_and_pmap_agree(reference, tmp_path):
  """(~25 CPU-s; the loss's 1 vs 8 devices and pmap equality is in CI: tests/test_contrastive_losses.py)"""
  check_devices_agree(reference, tmp_path, [("jit8", 8, "jit"), ("pmap4", 4, "pmap")])


def test_siglip_and_lit_locked_image_tower(reference, tmp_path):
  workdir = reference[0]
  c = config("siglip", contrastive__lock_image=True, contrastive__chunk=8, finetune__weights=workdir,
             finetune__into="visual", eval__every=0)   # one eval, at the end
  with c.finetune.unlocked():
    c.finetune.from_subtree = "visual"
  c.model.name = "clip"
  with c.model.unlocked():
    c.model.update(init_logit_bias=-10.0, init_logit_scale=float(np.log(10.0)))
  summary = train_and_evaluate(c, str(tmp_path / "lit"), devices=jax.devices()[:1])
  assert np.isfinite(summary["eval/zeroshot_accuracy"])
  metrics = [r for r in read_metrics(str(tmp_path / "lit" / "metrics.jsonl")) if "train/logit_bias" in r]
  assert metrics and metrics[0]["train/logit_bias"] < -9.0
  before, after = restore(workdir, 4)["params"], restore(str(tmp_path / "lit"), 4)["params"]
  for a, b in zip(jax.tree.leaves(before["visual"]), jax.tree.leaves(after["visual"])):
    np.testing.assert_array_equal(a, b)   # loaded, then locked
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before["text"]), jax.tree.leaves(after["text"]))]
  assert any(moved)


def test_errors_are_one_line():
  info = data_lib.dataset_info("digits_captions")
  cases = [(config(data__context_length=20), "data.context_length=20"),
           (config(contrastive__loss="siglip"), "needs a model with a logit bias"),
           (config(contrastive__loss="infonce"), "contrastive.loss"),
           (config(contrastive__chunk=5), "contrastive.chunk=5")]
  cases[1][0].model.name = "clip"
  for c, match in cases:
    with pytest.raises(UserError, match=match) as err:
      Contrastive(c, info)
    assert "\n" not in str(err.value)
  with pytest.raises(UserError, match="image-text pairs"):
    Contrastive(config(), data_lib.dataset_info("digits_seg"))
