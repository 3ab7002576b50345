"""Run outputs: metrics.jsonl, TensorBoard events, progress display, summary.json, training-curve plots.

Only process 0 writes; the other processes get a writer that does nothing.
"""
import json
import logging
import math
import os
import sys
import time

from jaxcnn.errors import UserError
from jaxcnn.train.workdir import describe_os_error

log = logging.getLogger("jaxcnn")


class MetricWriter:

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, start_step: int = 0):
    self.workdir, self.enabled, self.total = workdir, enabled, total_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._bar = None
    if not enabled:
      return
    _truncate_after(self.path, start_step)  # a resumed run rewrites what came after its checkpoint
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      log.warning("tensorboardX is not installed: no TensorBoard events")
    if sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      raise UserError(f"cannot write {self.path}: {describe_os_error(e)}") from None
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(_tensorboard_name(k), v, step)
    self._show(step, record)

  def _show(self, step, record):
    headline = [k for k in record if k.startswith("eval/") and k.count("/") == 1 and k != "eval/loss"][:3]
    keys = [k for k in ("train/loss", "train/accuracy", "eval/loss", *headline, "train/lr",
                        "throughput/images_per_s") if k in record]
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix({k.split("/")[-1][:10]: f"{record[k]:.4g}" for k in keys}, refresh=True)
    else:
      text = " ".join(f"{k}={record[k]:.4g}" for k in keys)
      log.info("step %d/%d %s", step, self.total, text)

  def flush(self):
    if self._tb is not None:
      self._tb_call(self._tb.flush)

  def close(self):
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb_call(self._tb.close)

  def _tb_call(self, fn):
    # TensorBoard events are a copy of metrics.jsonl: a full disk there is a warning, and it must not replace
    # the error that is stopping the run (e.g. a failed checkpoint save on the same full disk).
    try:
      fn()
    except OSError as e:
      log.warning("TensorBoard events in %s are incomplete: %s", os.path.join(self.workdir, "tensorboard"),
                  describe_os_error(e))


def _tensorboard_name(key: str) -> str:
  # TensorBoard's summary names allow [A-Za-z0-9_./-] only; 'eval/t2i_recall@5' would be logged as 'eval/t2i_recall_5'
  # with a warning per key. metrics.jsonl and summary.json keep the task's names.
  return key.replace("@", "_at")


def _plain(v):
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/Inf; keep them readable
  return v


def _truncate_after(path, step):
  """Drops records after `step` (and a last line cut short by a kill), keeping the file's earlier history."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  keep = [l for l in lines if _step_of(l) is not None and _step_of(l) <= step]
  if len(keep) != len(lines):
    write_text(path, "".join(keep))


def _step_of(line):
  try:
    return int(json.loads(line).get("step", 0))
  except (ValueError, AttributeError, TypeError):
    return None


def write_text(path: str, text: str):
  """Writes a whole file atomically (temporary file, then rename); failures are one-line UserErrors."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise UserError(f"cannot write {path}: {describe_os_error(e)}") from None


def read_metrics(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip() and _step_of(l) is not None]


def plot_curves(workdir: str):
  """plots/{loss,accuracy,lr}.png from metrics.jsonl (any metric with those names, train and eval)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  groups = {"loss": lambda k: k.endswith("/loss") or "loss" in k.split("/")[-1],
            "accuracy": lambda k: "accuracy" in k,
            "lr": lambda k: k == "train/lr"}
  written = []
  for name, wanted in groups.items():
    keys = sorted({k for r in records for k, v in r.items() if k != "step" and wanted(k) and isinstance(v, (int, float))})
    if not keys:
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
      pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))]
      ax.plot(*zip(*pts), marker="o" if k.startswith("eval/") else None, markersize=3, label=k)
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, "plots", f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written


class Stopwatch:
  """Wall time that excludes eval/checkpoint pauses, for throughput."""

  def __init__(self):
    self.t = time.perf_counter()

  def lap(self) -> float:
    now = time.perf_counter()
    dt, self.t = now - self.t, now
    return dt
