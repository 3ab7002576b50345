"""train.early_stopping: Keras' rule, the best checkpoint kept and reported, the patience counter resumed exactly
after a stop (rebuilt from metrics.jsonl), and a metric the task does not log refused before training."""
import os

import jax
import numpy as np
import pytest

from experiments.configs.common import base_config
from jaxcnn.errors import UserError
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.early_stopping import EarlyStopping


def test_keras_rule_with_min_delta_and_patience():
  stopper = EarlyStopping("eval/loss", "min", patience=2, min_delta=0.1)
  for step, value in ((1, 1.0), (2, 0.95), (3, 0.85)):  # 0.95 is not better by more than 0.1
    assert not stopper.update(step, {"eval/loss": value})
  assert (stopper.best, stopper.best_step, stopper.wait) == (0.85, 3, 0)
  assert not stopper.update(4, {"eval/loss": float("nan")})  # NaN never improves
  assert stopper.update(5, {"eval/loss": 0.8}) and stopper.stopped_at == 5
  maximise = EarlyStopping("eval/accuracy", "max", patience=0, min_delta=0.0)
  assert not maximise.update(1, {"eval/accuracy": 0.5}) and maximise.update(2, {"eval/accuracy": 0.5})


def config(steps, **early):
  """lenet5_modern on digits at a constant, tiny lr: accuracy cannot rise by min_delta=1, so the first eval
  stays the best and the run stops `patience` evals later."""
  c = base_config()
  c.model.name, c.data.name, c.data.image_size = "lenet5_modern", "digits", 28
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 32, 4
  c.eval.every, c.eval.batch_size = 4, 120
  c.checkpoint.every, c.checkpoint.keep, c.checkpoint.use_async = 1000, 1, False
  c.optim.name, c.optim.lr, c.optim.schedule = "adam", 1e-4, "constant"
  c.train.early_stopping.update({**dict(metric="eval/accuracy", patience=2, min_delta=1.0), **early})
  return c


def run(c, workdir):
  return train_and_evaluate(c, str(workdir), devices=jax.devices()[:1])


def test_stops_keeps_the_best_checkpoint_and_resumes_the_patience_counter(tmp_path):
  whole = run(config(40), tmp_path / "whole")
  report = whole["early_stopping"]
  assert whole["step"] == 12 and report["stopped_at"] == 12 and report["best_step"] == 4
  assert report["best_checkpoint"].endswith(os.path.join("checkpoints", "4"))
  assert sorted(os.listdir(tmp_path / "whole" / "checkpoints"), key=int) == ["4", "12"]  # keep=1 + the best

  # The same run cut after its eval at step 8 (one eval without improvement), then resumed: without the
  # counter rebuilt from metrics.jsonl it would stop at 16.
  cut = tmp_path / "cut"
  assert run(config(8), cut)["early_stopping"]["stopped_at"] is None
  resumed = run(config(40), cut)
  assert resumed["step"] == 12 and resumed["early_stopping"] == {**report, "best_checkpoint":
                                                                 report["best_checkpoint"].replace("whole", "cut")}
  np.testing.assert_allclose(resumed["eval/accuracy"], whole["eval/accuracy"])
  # A stopped run started again stops at once, training nothing.
  again = run(config(40), cut)
  assert again["step"] == 12 and again["early_stopping"]["stopped_at"] == 12


def test_a_metric_the_task_does_not_log_is_one_line_before_training(tmp_path):
  with pytest.raises(UserError, match=r"'eval/bleu' is not a metric this task logs at eval; it logs: "
                                      r"eval/accuracy, eval/loss, eval/top5_accuracy$"):
    run(config(8, metric="eval/bleu"), tmp_path / "bad")
  assert not os.path.exists(tmp_path / "bad" / "metrics.jsonl")
  with pytest.raises(UserError, match="mode must be one of"):
    run(config(8, mode="up"), tmp_path / "bad")
