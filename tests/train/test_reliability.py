"""Trustworthy runs: one test per failure of the reliability issue (signals, shared workdirs, damaged,
incompatible or foreign checkpoints, full or unwritable file systems), in-process where a signal is not needed."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from experiments.configs.common import base_config
from jaxcnn.errors import UserError
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.checkpoint import check_iterator_state, checksums, verify
from jaxcnn.train.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONE = None  # one device: these tests are about files, not sharding


def config(**overrides):
  """lenet5_modern on digits, 24 steps, a synchronous checkpoint every 8."""
  c = base_config()
  c.model.name, c.data.name, c.data.image_size = "lenet5_modern", "digits", 28
  c.train.steps, c.train.batch_size, c.train.log_every = 24, 32, 4
  c.eval.every, c.eval.batch_size = 24, 64
  c.checkpoint.every, c.checkpoint.use_async = 8, False
  c.optim.name, c.optim.lr = "adam", 3e-3
  for key, value in overrides.items():
    section, leaf = key.split("__")
    c[section][leaf] = value
  return c


def run(workdir, **overrides):
  return train_and_evaluate(config(**overrides), str(workdir), devices=jax.devices()[:1])


def steps_logged(workdir):
  return [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]


def checkpoint_names(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def params_of(workdir, step):
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  return str(workdir), run(workdir)


@pytest.fixture
def copy_of(reference, tmp_path):
  """A fresh copy of the reference workdir (its checkpoints 8, 16, 24 and config), to damage."""
  def make():
    target = str(tmp_path / "copy")
    shutil.copytree(reference[0], target)
    return target
  return make


def damage(workdir, step, how="garbage"):
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "*"), recursive=True)
           if os.path.isfile(p)]
  for path in files:
    if how == "garbage":
      open(path, "wb").write(b"garbage")


def flip_one_bit_in_the_largest_array_file(workdir, step):
  data = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d", "*"))
  path = max(data, key=os.path.getsize)
  content = bytearray(open(path, "rb").read())
  content[len(content) // 2] ^= 0x10
  open(path, "wb").write(bytes(content))


# --- integrity ------------------------------------------------------------------------------------------------
def test_checksums_catch_a_single_flipped_bit_and_non_finite_values():
  state = {"w": np.linspace(-1, 1, 1000).astype(np.float32), "b": np.zeros(3, np.int32), "m": np.ones(2, bool)}
  meta = {"format": 2, "checksums": checksums(state)}
  assert verify(state, {"next_index": 5}, meta, 5) is None
  for key, index in (("w", 517), ("b", 1), ("m", 0)):
    bad = {k: v.copy() for k, v in state.items()}
    bad[key].view(np.uint8)[index * bad[key].itemsize] ^= 1  # the lowest bit of one element
    assert "checksum mismatch" in verify(bad, {"next_index": 5}, meta, 5)
  nan_state = dict(state, w=np.full(1000, np.nan, np.float32))
  assert "non-finite" in verify(nan_state, {"next_index": 5}, {"format": 2, "checksums": checksums(nan_state)}, 5)


def test_iterator_state_must_match_the_step():
  assert check_iterator_state({"next_index": 40}, 40) is None
  assert "does not match step 40" in check_iterator_state({"next_index": 7}, 40)
  assert "not an integer" in check_iterator_state({"next_index": "abc"}, 40)
  assert "not a JSON object" in check_iterator_state([40], 40)


def test_a_flipped_bit_sets_the_step_aside_and_the_run_ends_as_the_reference(reference, copy_of):
  ref, ref_summary = reference
  workdir = copy_of()
  flip_one_bit_in_the_largest_array_file(workdir, 24)
  summary = run(workdir)
  assert steps_logged(workdir)[-3:] == [16, 20, 24] and min(s for s in steps_logged(workdir) if s > 16) == 20
  assert [n for n in checkpoint_names(workdir) if n.startswith("24.corrupt-")]
  assert summary["eval/loss"] == ref_summary["eval/loss"]
  chex.assert_trees_all_equal(params_of(ref, 24), params_of(workdir, 24))


def test_a_wrong_iterator_position_is_corruption(reference, copy_of):
  workdir = copy_of()
  for value in (7, "abc"):
    with open(os.path.join(workdir, "checkpoints", "24", "data", "metadata"), "w") as f:
      json.dump({"next_index": value}, f)
    summary = run(workdir)
    assert summary["eval/loss"] == reference[1]["eval/loss"]
  assert len([n for n in checkpoint_names(workdir) if n.startswith("24.corrupt-")]) == 2  # twice: no collision


def test_every_step_damaged_stops_with_one_line_then_start_fresh_starts_over(reference, copy_of, capfd):
  workdir = copy_of()
  for step in (8, 16, 24):
    for manifest in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "manifest.ocdbt"),
                              recursive=True):
      os.remove(manifest)
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(UserError, match="no usable checkpoint .*start_fresh=True"):
    run(workdir, train__steps=32)
  assert checkpoint_names(workdir) == ["16", "24", "8"]  # nothing renamed, nothing started
  assert open(os.path.join(workdir, "config.json")).read() == before
  assert "Event loop is closed" not in capfd.readouterr().err
  summary = run(workdir, checkpoint__start_fresh=True)
  assert steps_logged(workdir)[0] == 4 and summary["eval/loss"] == reference[1]["eval/loss"]
  assert len([n for n in checkpoint_names(workdir) if ".corrupt-" in n]) == 3


# --- compatibility ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [
    ({"train__batch_size": 64}, "train.batch_size"),
    ({"train__seed": 1}, "train.seed"),
    ({"model__c1_padding": 0}, "model.c1_padding"),
    ({"model__name": "lenet5", "data__image_size": 32}, "model.name"),
    ({"optim__name": "sgd"}, "state structure"),
    ({"data__sampler": "balanced"}, "data.sampler"),
])
def test_an_incompatible_resume_is_refused_before_anything_is_written(reference, copy_of, override, key):
  workdir = copy_of()
  config_json = os.path.join(workdir, "config.json")
  before = open(config_json).read()
  c = config()
  for k, v in override.items():
    section, leaf = k.split("__")
    with c[section].unlocked():
      c[section][leaf] = v
  with pytest.raises(UserError, match=f"another configuration \\({key}: checkpoint"):
    train_and_evaluate(c, workdir, devices=jax.devices()[:1])
  assert open(config_json).read() == before
  assert checkpoint_names(workdir) == ["16", "24", "8"]


def test_allowed_changes_resume(reference, copy_of):
  """More steps, another eval interval and another device count continue the same run."""
  workdir = copy_of()
  train_and_evaluate(config(train__steps=32, eval__every=4), workdir, devices=jax.devices()[:2])
  assert min(steps_logged(workdir)[6:]) == 28  # the reference logged 4..24; the resumed run starts at 25


# --- one writer per workdir -------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_workdir_is_refused_and_a_dead_holder_frees_it(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jaxcnn.train.workdir import WorkdirLock; "
       "l = WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)", str(tmp_path)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"in use by another run \\(pid {holder.pid} on "):
      run(tmp_path, train__steps=4)
    assert not os.path.exists(tmp_path / "config.json") and not os.path.exists(tmp_path / "checkpoints")
  finally:
    holder.kill()
    holder.wait()
  run(tmp_path, train__steps=4, eval__every=0, checkpoint__every=0)  # SIGKILL released the lock
  assert os.path.exists(tmp_path / "summary.json")


# --- file systems -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where,match", [("file", "is not a directory"), ("under_file", "Not a directory"),
                                         ("dev_null", "is not a directory")])
def test_unusable_workdirs_are_one_line_errors(tmp_path, where, match):
  (tmp_path / "file").write_text("x")
  path = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "run", "dev_null": "/dev/null"}[where]
  with pytest.raises(UserError, match=match):
    run(path, train__steps=2)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 1.2 MB file system (room for about two lenet checkpoints), or skip where mounting is not allowed."""
  mount = tmp_path / "fs"
  mount.mkdir()
  made = [mount]

  def make(options="size=1200k"):
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
      pytest.skip("cannot mount a tmpfs here (needs root)")
    return mount
  yield make
  subprocess.run(["umount", str(made[0])], capture_output=True)


def test_a_full_disk_during_a_save_stops_the_run_with_one_line(small_tmpfs):
  mount = small_tmpfs()
  with pytest.raises(UserError, match="could not save checkpoint .*no space left on the device; training stopped"):
    run(mount / "run", train__steps=200, checkpoint__every=8, checkpoint__use_async=True, eval__every=0)
  assert max(steps_logged(mount / "run")) < 60  # stopped at the failed save, not intervals later


def test_a_read_only_file_system_is_one_line(small_tmpfs):
  mount = small_tmpfs("size=100k,ro")
  with pytest.raises(UserError, match="Read-only file system"):
    run(mount / "run", train__steps=2)


# --- signals (whole runs, as a scheduler sends them) -------------------------------------------------------------
ARGS = ["--exp=lenet_digits", "--config.model.name=lenet5_modern", "--config.data.image_size=28",
        "--config.train.batch_size=32", "--config.eval.batch_size=64", "--config.train.log_every=2",
        "--config.train.steps=60", "--config.eval.every=60", "--config.checkpoint.every=1000"]


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXCNN_", "SLURM_"))}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  env["PYTHON"] = sys.executable
  env.update(extra)
  return env


def _last_logged(workdir):
  try:
    return max(steps_logged(workdir), default=0)
  except (OSError, ValueError):
    return 0


def _signal_when(proc, workdir, at_step, signum, target=None, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None and _last_logged(workdir) < at_step:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be signalled"
  os.kill(target or proc.pid, signum)
  return _last_logged(workdir)


def _steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_sigterm_and_sigint_save_the_current_step_and_the_run_ends_identical(tmp_path):
  cmd = [sys.executable, "-m", "experiments.run", *ARGS]
  ref = subprocess.run(cmd + [f"--workdir={tmp_path / 'ref'}"], cwd=ROOT, env=_env(), capture_output=True, text=True)
  assert ref.returncode == 0, ref.stderr[-2000:]
  cut = tmp_path / "cut"
  for signum, at, status in ((signal.SIGTERM, 10, 143), (signal.SIGINT, 30, 130)):
    proc = subprocess.Popen(cmd + [f"--workdir={cut}"], cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    sent_after = _signal_when(proc, cut, at, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"stopped: stopped by {signal.Signals(signum).name} after step")
    assert _steps_on_disk(cut)[-1] >= sent_after  # nothing lost: saved at the step where it stopped
  out = subprocess.run(cmd + [f"--workdir={cut}"], cwd=ROOT, env=_env(), capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  a = json.load(open(tmp_path / "ref" / "summary.json"))
  b = json.load(open(cut / "summary.json"))
  assert a["eval/loss"] == b["eval/loss"] and a["eval/accuracy"] == b["eval/accuracy"]
  chex.assert_trees_all_equal(params_of(str(tmp_path / "ref"), 60), params_of(str(cut), 60))


def test_slurm_tasks_stop_together_on_sigterm_and_resume(tmp_path):
  """launch.sh's SLURM path without SLURM: two tasks with the variables srun sets; SIGTERM reaches one of them
  (JAX's preemption service tells the other), both save the same step and exit 143; the same command resumes."""
  job = str(40000 + os.getpid() % 4000)
  workdir = tmp_path / "slurm"

  def start():
    return [subprocess.Popen(["bash", "launch.sh", *ARGS, f"--workdir={workdir}"], cwd=ROOT, stderr=subprocess.PIPE,
                             text=True, env=_env(SLURM_JOB_ID=job, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                                                 SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_NUM_NODES="1"))
            for i in range(2)]

  tasks = start()
  try:
    _signal_when(tasks[0], workdir, 10, signal.SIGTERM, target=tasks[1].pid)
    errs = [t.communicate(timeout=120)[1] for t in tasks]
  finally:
    for t in tasks:
      t.kill()
  assert [t.returncode for t in tasks] == [143, 143], errs[0][-1500:] + errs[1][-1500:]
  assert "2 device(s) in 2 process(es)" in errs[0]
  saved = _steps_on_disk(workdir)[-1]
  assert all(f"after step {saved};" in e for e in errs)
  tasks = start()
  errs = [t.communicate(timeout=300)[1] for t in tasks]
  assert [t.returncode for t in tasks] == [0, 0], errs[0][-1500:]
  assert f"resumed from {workdir / 'checkpoints'} at step {saved}" in errs[0]
  assert json.load(open(workdir / "summary.json"))["processes"] == 2


def test_launch_sh_forwards_sigterm_to_its_processes(tmp_path):
  workdir = tmp_path / "two"
  proc = subprocess.Popen(["bash", "launch.sh", "--procs=2", *ARGS, f"--workdir={workdir}"], cwd=ROOT, env=_env(),
                          stderr=subprocess.PIPE, text=True)
  _signal_when(proc, workdir, 10, signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  assert "launch.sh: stopped by SIGTERM after the processes saved their state" in err
  assert _steps_on_disk(workdir)[-1] >= 10
