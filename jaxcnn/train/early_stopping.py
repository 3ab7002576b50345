"""Early stopping on an eval metric (`train.early_stopping`), for every task.

    --config.train.early_stopping.metric=eval/accuracy   # '' (default): off
    --config.train.early_stopping.mode=max               # min | max | auto (the task's headline mode for its
                                                         #   headline metric, else min for *loss*, max otherwise)
    --config.train.early_stopping.patience=5             # evals without improvement before stopping
    --config.train.early_stopping.min_delta=0.001        # smaller changes are not improvements

Keras' rule: an eval improves when it beats the best so far by more than min_delta (value < best - min_delta
in min mode); after `patience` evals in a row that do not, training stops (0 and 1: at the first). The
metric is checked at each eval step (`eval.every`); with early stopping on, the trainer checkpoints at every
eval and keeps the best checkpoint by this metric (Orbax's best-N policy), and the summary reports the best
step, its value and that checkpoint.

Resume. The patience counter is not stored anywhere: it is a function of the eval history, which
metrics.jsonl holds (a resumed run truncates that file after its checkpoint's step, so the history up to the
restored step is exactly the one the killed run had seen). `replay` rebuilds the counter from it, so a run
killed and resumed stops at the same step as an uninterrupted one.
"""
import json
import logging
import math
import os

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")
MODES = ("min", "max", "auto")


class EarlyStopping:

  def __init__(self, metric: str, mode: str, patience: int, min_delta: float):
    self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
    self.best, self.best_step, self.wait, self.stopped_at = None, None, 0, None

  @classmethod
  def from_config(cls, config, task):
    """None when `train.early_stopping.metric` is empty (or the section absent)."""
    cfg = config.train.get("early_stopping") or {}
    metric = cfg.get("metric", "") or ""
    if not metric:
      return None
    mode = cfg.get("mode", "auto")
    if mode not in MODES:
      raise UserError(f"train.early_stopping.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
      headline, headline_mode = task.best_metric
      mode = headline_mode if metric == headline else ("min" if "loss" in metric else "max")
    patience, min_delta = cfg.get("patience", 5), cfg.get("min_delta", 0.0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
      raise UserError(f"train.early_stopping.patience must be an integer >= 0, got {patience!r}")
    if not isinstance(min_delta, (int, float)) or not 0 <= min_delta < math.inf:
      raise UserError(f"train.early_stopping.min_delta must be a number >= 0, got {min_delta!r}")
    if int(config.eval.every) <= 0:
      raise UserError("train.early_stopping needs evals during training: set eval.every > 0")
    return cls(metric, mode, patience, float(min_delta))

  def check_names(self, names, complete: bool = True):
    """A UserError when the task's evals do not log the metric (`complete`: `names` is every name they log)."""
    if complete and self.metric not in names:
      raise UserError(f"train.early_stopping.metric '{self.metric}' is not a metric this task logs at eval; "
                      f"it logs: {', '.join(sorted(names))}")

  # Orbax keeps the checkpoint with the largest value of this entry of its metrics: the step of the last eval
  # that improved (the others get -1), so the kept checkpoint is the one this rule calls best (min_delta
  # included), not merely the one with the best raw value.
  CHECKPOINT_KEY = "early_stopping/improved_at"

  def checkpoint_metrics(self, step: int, metrics: dict) -> dict:
    return {**metrics, self.CHECKPOINT_KEY: float(step if self.best_step == step else -1)}

  @property
  def stopped(self) -> bool:
    return self.stopped_at is not None

  def update(self, step: int, metrics: dict) -> bool:
    """Takes one eval's metrics; True when training should stop now."""
    if self.metric not in metrics:
      self.check_names(metrics)
    value = float(metrics[self.metric])
    better = math.isfinite(value) and (self.best is None or (
        value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta))
    if better:
      self.best, self.best_step, self.wait = value, step, 0
    else:
      self.wait += 1
      if self.wait >= self.patience and self.stopped_at is None:
        self.stopped_at = step
    return self.stopped

  def replay(self, metrics_path: str, upto_step: int):
    """Rebuilds the state from the evals metrics.jsonl records at steps <= upto_step (see the module doc)."""
    if not os.path.exists(metrics_path):
      return
    with open(metrics_path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue  # a line cut by the kill
        if record.get("step", math.inf) <= upto_step and self.metric in record:
          value = record[self.metric]
          self.update(int(record["step"]), {self.metric: float(value) if not isinstance(value, str)
                                            else float("nan")})
    if self.best_step is not None:
      log.info("early stopping: best %s=%.6g at step %d, %d eval(s) without improvement",
               self.metric, self.best, self.best_step, self.wait)

  def report(self, checkpoint_dir: str) -> dict:
    return {"metric": self.metric, "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
            "best": self.best, "best_step": self.best_step, "stopped_at": self.stopped_at,
            "best_checkpoint": os.path.join(checkpoint_dir, str(self.best_step)) if self.best_step else None}
