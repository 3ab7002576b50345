"""Whole runs as a user starts them: 2 processes through launch.sh, and SIGKILL + restart."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--exp=lenet_digits", "--config.model.name=lenet5_modern", "--config.data.image_size=28",
        "--config.train.batch_size=32", "--config.eval.batch_size=64", "--config.train.log_every=2"]


def _env(devices=1):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAXCNN_")}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  return env


def _run(args, workdir, devices=1):
  cmd = [sys.executable, "-m", "experiments.run", *args, f"--workdir={workdir}"]
  out = subprocess.run(cmd, cwd=ROOT, env=_env(devices), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  return out


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if l.strip()]


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in _records(workdir) if "train/loss" in r}


def test_two_processes_match_one(tmp_path):
  args = ARGS + ["--config.train.steps=8", "--config.eval.every=8", "--config.checkpoint.every=4"]
  _run(args, tmp_path / "one")
  out = subprocess.run(["bash", "launch.sh", "--procs=2", *args, f"--workdir={tmp_path / 'two'}"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "2 device(s) in 2 process(es)" in out.stderr
  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(one) == sorted(two) == [2, 4, 6, 8]
  np.testing.assert_allclose([one[s] for s in one], [two[s] for s in one], rtol=1e-4)
  s1 = json.load(open(tmp_path / "one" / "summary.json"))
  s2 = json.load(open(tmp_path / "two" / "summary.json"))
  np.testing.assert_allclose(s1["eval/loss"], s2["eval/loss"], rtol=1e-4)
  assert s2["processes"] == 2


@pytest.mark.slow  # two more compiles of clip_tiny in subprocesses (CI time); the loss's 1 vs 8 devices and pmap
def test_contrastive_loss_over_two_processes_matches_one(tmp_path):  # are in tests/test_contrastive_losses.py
  """CLIP's loss is over the global batch: two processes of half the batch each give one process's losses."""
  args = ["--exp=clip_digits", "--config.train.steps=4", "--config.train.batch_size=32", "--config.train.log_every=1",
          "--config.eval.every=4", "--config.checkpoint.every=4", "--config.optim.warmup_steps=0"]
  _run(args, tmp_path / "one")
  out = subprocess.run(["bash", "launch.sh", "--procs=2", *args, f"--workdir={tmp_path / 'two'}"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  np.testing.assert_allclose([one[s] for s in one], [two[s] for s in one], rtol=1e-4)
  s1 = json.load(open(tmp_path / "one" / "summary.json"))
  s2 = json.load(open(tmp_path / "two" / "summary.json"))
  assert s2["processes"] == 2
  for key in ("eval/zeroshot_accuracy", "eval/t2i_recall@1", "eval/i2t_recall@5"):
    np.testing.assert_allclose(s1[key], s2[key], atol=1e-6, err_msg=key)


def test_launch_sh_reports_a_failing_process(tmp_path):
  out = subprocess.run(["bash", "launch.sh", "--procs=2", "--exp=lenet_digits", "--config.train.steps=abc",
                        f"--workdir={tmp_path}"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "train.steps expects an integer" in out.stderr


def test_sigkill_then_restart_ends_identical(tmp_path):
  args = ARGS + ["--config.train.steps=60", "--config.eval.every=60", "--config.checkpoint.every=5"]
  _run(args, tmp_path / "ref")
  cut = tmp_path / "cut"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args, f"--workdir={cut}"], cwd=ROOT,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  try:
    while time.time() < deadline:
      names = os.listdir(cut / "checkpoints") if (cut / "checkpoints").is_dir() else []
      steps = [int(d) for d in names if d.isdigit()]  # finished steps; Orbax writes into '<step>.orbax-checkpoint-tmp'
      steps = [s for s in steps if s >= 15]
      if steps or proc.poll() is not None:
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  killed_at = max(int(d) for d in os.listdir(cut / "checkpoints") if d.isdigit())
  assert killed_at < 60
  _run(args, cut)
  steps = [r["step"] for r in _records(cut) if "train/loss" in r]
  assert steps == sorted(steps) and len(set(steps)) == len(steps)  # resumed: no step logged twice
  assert steps[0] == 2  # what came before the kill (up to the checkpoint) is kept, the rest rewritten
  ref, again = json.load(open(tmp_path / "ref" / "summary.json")), json.load(open(cut / "summary.json"))
  assert again["eval/loss"] == ref["eval/loss"] and again["eval/accuracy"] == ref["eval/accuracy"]
  assert _losses(cut) == _losses(tmp_path / "ref")
