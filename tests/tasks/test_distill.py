"""Task 'distill': Hinton's and DeiT's losses against torch, a teacher workdir loaded frozen and evaluated, a
DeiT student's two heads, and a teacher with other classes refused in one line (exit status 2)."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs.common import base_config
from jaxcnn.data import dataset_info
from jaxcnn.errors import UserError
from jaxcnn.tasks.distill import Distill, default_config, hard_distillation_loss, soft_distillation_loss
from jaxcnn.train import train_and_evaluate

torch = pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_soft_and_hard_losses_are_hintons_and_deits():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 7)).astype(np.float32) * 3, rng.normal(size=(4, 7)).astype(np.float32) * 3
  F = torch.nn.functional
  T = 3.0
  want = F.kl_div(F.log_softmax(torch.tensor(s) / T, -1), F.softmax(torch.tensor(t) / T, -1),
                  reduction="batchmean").item() * T * T
  np.testing.assert_allclose(soft_distillation_loss(s, t, T), want, rtol=1e-5)
  want = F.cross_entropy(torch.tensor(s), torch.tensor(t).argmax(-1)).item()
  np.testing.assert_allclose(hard_distillation_loss(s, t), want, rtol=1e-5)


def small_config(task="classification", steps=12, **distill):
  c = base_config()
  c.task = task
  c.model.name, c.data.name, c.data.image_size = "lenet5_modern", "digits", 16
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 32, 4
  c.eval.batch_size = 120
  c.checkpoint.every, c.checkpoint.use_async = 1000, False
  c.optim.name, c.optim.lr = "adam", 3e-3
  if task == "distill":
    c.distill = default_config()
    c.distill.update(distill)
  return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  return workdir, train_and_evaluate(small_config(steps=30), workdir, devices=jax.devices()[:1])


def test_student_trains_with_a_frozen_teacher_from_a_workdir(teacher, tmp_path):
  path, teacher_summary = teacher
  c = small_config("distill", teacher=path, alpha=0.7)
  summary = train_and_evaluate(c, str(tmp_path / "student"), devices=jax.devices()[:1])
  # The teacher in the student's state is the teacher's checkpoint, unchanged by training.
  assert summary["eval/teacher_accuracy"] == pytest.approx(teacher_summary["eval/accuracy"], abs=1e-9)
  assert 0 <= summary["eval/agreement"] <= 1 and summary["param_count"] == teacher_summary["param_count"]
  records = [json.loads(line) for line in open(tmp_path / "student" / "metrics.jsonl")]
  assert any("train/distill_loss" in r and "train/label_loss" in r for r in records)


def test_a_deit_student_takes_labels_on_one_head_and_the_teacher_on_the_other(teacher):
  c = small_config("distill", teacher=teacher[0], type="hard", alpha=0.5)
  c.model = base_config().model
  c.model.update(dict(name="deit_tiny_distilled_patch4_32", width=16, depth=1, num_heads=2, mlp_dim=32))
  task = Distill(c, dataset_info("digits"))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(4, 16, 16, 1)), jnp.float32), "label": jnp.arange(4)}
  variables = task.init(jax.random.key(0), batch)
  params = variables.pop("params")
  params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  loss, (state, metrics) = task.loss(params, variables, batch, jax.random.key(1))
  cls, dist = task.model.apply({"params": params}, batch["image"], train=False, heads=True)
  teacher_logits = task.teacher.apply(variables["teacher"], batch["image"], train=False)
  want = 0.5 * optax.softmax_cross_entropy_with_integer_labels(cls, batch["label"]).mean() \
      + 0.5 * optax.softmax_cross_entropy_with_integer_labels(dist, teacher_logits.argmax(-1)).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert set(state) == {"teacher"}


def test_a_teacher_with_other_classes_is_one_line_with_exit_status_2(teacher, tmp_path):
  other = tmp_path / "teacher100"
  shutil.copytree(teacher[0], other)
  cfg = json.load(open(other / "config.json"))
  cfg["data"]["name"] = "cifar100"
  json.dump(cfg, open(other / "config.json", "w"))
  with pytest.raises(UserError, match="has 100 classes, the student's data 'digits' has 10"):
    Distill(small_config("distill", teacher=str(other)), dataset_info("digits"))
  out = subprocess.run([sys.executable, "-m", "experiments.run", "--exp=distill_digits",
                        f"--config.distill.teacher={other}", f"--workdir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2, out.stderr
  assert "has 100 classes" in out.stderr.strip().splitlines()[-1]
