"""A GAN run through the trainer: both networks and optimizer states are checkpointed, and resume is exact."""
import glob
import json
import os
import shutil

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.writers import read_metrics


def gan_config():
  c = base_config()
  c.task = "gan"
  c.model.name = "dcgan"
  c.model.latent_dim = 8
  c.model.g_width = 4
  c.model.d_width = 4
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.fid_samples = 0       # no feature extractor in this test
  c.gan.grid_size = 2
  c.train.steps = 12
  c.train.batch_size = 8
  c.train.log_every = 2
  c.eval.every = 0
  c.eval.batch_size = 360
  c.checkpoint.every = 4
  c.checkpoint.use_async = False
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.b1 = 0.5
  return c


def checkpoint_state(workdir, step=None):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  step = mngr.latest_step() if step is None else step
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gan_ref"))
  summary = train_and_evaluate(gan_config(), workdir)
  return workdir, summary


def test_checkpoint_holds_both_networks_and_both_optimizers(reference):
  workdir, summary = reference
  state = checkpoint_state(workdir)
  assert set(state["params"]) == {"generator", "discriminator"}
  assert set(state["opt_state"]) == {"generator", "discriminator"}
  assert set(state["model_state"]["batch_stats"]) == {"generator", "discriminator"}
  assert int(state["step"]) == 12
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6, 8, 10, 12]
  assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"} <= set(records[0])
  assert "eval/d_real" in json.load(open(os.path.join(workdir, "summary.json")))
  assert glob.glob(os.path.join(workdir, "plots", "samples_step000012.png"))


def test_resume_after_losing_the_last_checkpoint_is_exact(reference, tmp_path):
  ref, ref_summary = reference
  workdir = str(tmp_path)
  # As if the run had been killed after step 8 was saved: steps 4 and 8 on disk, nothing after.
  os.makedirs(os.path.join(workdir, "checkpoints"))
  for step in ("4", "8"):
    shutil.copytree(os.path.join(ref, "checkpoints", step), os.path.join(workdir, "checkpoints", step))
  summary = train_and_evaluate(gan_config(), workdir)
  logged = [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  assert logged == [10, 12]  # resumed from step 8
  chex.assert_trees_all_equal(checkpoint_state(ref), checkpoint_state(workdir))
  assert summary["eval/d_real"] == ref_summary["eval/d_real"]


def test_pmap_path_matches_jit(reference, tmp_path):
  """Legacy pmap: each device takes its slice of the global z, BN statistics are averaged over devices."""
  ref, _ = reference
  config = gan_config()
  config.train.parallel = "pmap"
  config.checkpoint.every = 12
  train_and_evaluate(config, str(tmp_path))
  losses = lambda w: [r["train/loss"] for r in read_metrics(os.path.join(w, "metrics.jsonl")) if "train/loss" in r]
  np.testing.assert_allclose(losses(str(tmp_path)), losses(ref), rtol=1e-4)
  chex.assert_trees_all_close(checkpoint_state(str(tmp_path))["params"], checkpoint_state(ref)["params"],
                              rtol=1e-3, atol=1e-5)
