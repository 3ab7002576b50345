"""StackGAN task: matching-aware loss, text-embedding batches, and Stage II built on a trained Stage I."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs.common import base_config
from jaxcnn import data as data_lib
from jaxcnn.errors import UserError
from jaxcnn.tasks import TrainState, get_task
from jaxcnn.tasks.gan import gan_defaults, stackgan_defaults
from jaxcnn.train import optim, train_and_evaluate

INFO = data_lib.dataset_info("digits")


def stage_config(stage=1, embedding="label", steps=2):
  c = base_config()
  c.task = "stackgan"
  c.model.name = f"stackgan_stage{stage}"
  if stage == 1:
    c.model.latent_dim = 6
  else:
    c.model.r_num = 1
  c.model.c_dim = 3
  c.model.gf_dim = 4
  c.model.df_dim = 4
  c.model.ef_dim = 3
  c.data.name = "digits"
  c.data.image_size = 8 * stage
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.fid_samples = 0
  c.gan.grid_size = 2
  c.stackgan = stackgan_defaults()
  c.stackgan.embedding = embedding
  c.stackgan.embed_dim = 12
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.log_every = 1
  c.eval.every = 0
  c.eval.batch_size = 360
  c.checkpoint.every = 0
  c.checkpoint.use_async = False
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  return c


def state_for(task, batch):
  schedule = optim.make_schedule(task.config.optim, 10)
  tx = task.optimizer(lambda c: optim.make_optimizer(c, schedule))
  variables = dict(jax.jit(task.init)(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  return tx, TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                        opt_state={k: t.init(params[k]) for k, t in tx.items()}, ema_params={},
                        rng=jax.random.PRNGKey(1))


def a_batch(n=8, size=8):
  images = jax.random.uniform(jax.random.PRNGKey(2), (n, size, size, 1), minval=-1, maxval=1)
  return {"image": images, "label": jnp.arange(n, dtype=jnp.int32) % 10}


def test_matching_aware_discriminator_loss():
  task = get_task(stage_config(), INFO)
  batch = a_batch()
  _, state = state_for(task, batch)
  fake = jax.random.uniform(jax.random.PRNGKey(3), batch["image"].shape, minval=-1, maxval=1)
  ms = state.model_state

  def parts(batch):
    b = task.prepare(batch, None, True)
    loss, _, metrics = task.discriminator_loss(state.params, ms, b, fake)
    (real, _), _ = task.discriminate(state.params, ms, b["image"], b, True)
    (wrong, _), _ = task.discriminate(state.params, ms, b["image"], dict(b, embedding=jnp.roll(b["embedding"], 1, 0)),
                                      True)
    (fake_l, _), _ = task.discriminate(state.params, ms, fake, b, True)
    return float(loss), real, wrong, fake_l

  sp = jax.nn.softplus
  # Every label differs from its rolled neighbour: L_real + (L_fake + L_wrong) / 2 over all pairs.
  loss, real, wrong, fake_l = parts(batch)
  expected = np.mean(sp(-real)) + 0.5 * (np.mean(sp(fake_l)) + np.mean(sp(wrong)))
  assert loss == pytest.approx(float(expected), rel=1e-5)
  # One class only: no pair is mismatched, the wrong term drops out.
  loss, real, _, fake_l = parts(dict(batch, label=jnp.zeros(8, jnp.int32)))
  assert loss == pytest.approx(float(np.mean(sp(-real)) + 0.5 * np.mean(sp(fake_l))), rel=1e-5)


def test_generator_loss_adds_the_conditioning_augmentation_kl():
  config = stage_config()
  task = get_task(config, INFO)
  batch = a_batch()
  _, state = state_for(task, batch)
  b = task.prepare(dict(batch, z=task.latents(jax.random.PRNGKey(4), 8)), None, True)
  fake, extra, _ = task.generate(state.params, state.model_state, b, jax.random.PRNGKey(5), True)
  loss, metrics = task.generator_loss(state.params, state.model_state, b, fake, extra)
  mu, logvar = np.asarray(extra["mu"]), np.asarray(extra["logvar"])
  kl = np.mean(0.5 * (mu ** 2 + np.exp(logvar) - 1 - logvar))  # the authors' mean over batch and dimensions
  assert float(metrics["train/kl"]) == pytest.approx(kl, rel=1e-5)
  assert float(loss) == pytest.approx(float(metrics["train/g_adv"]) + 2.0 * kl, rel=1e-5)


def test_text_embedding_batches():
  """embedding='data': batch['embedding'] [B, captions, D]; a random caption per image in training, the first in eval."""
  task = get_task(stage_config(embedding="data"), INFO)
  captions = jax.random.normal(jax.random.PRNGKey(6), (8, 5, 12))
  batch = dict(a_batch(), embedding=captions)
  picked = np.asarray(task.prepare(batch, jax.random.PRNGKey(7), True)["embedding"])
  rows = [[np.allclose(picked[i], captions[i, j]) for j in range(5)] for i in range(8)]
  assert all(sum(r) == 1 for r in rows) and len({r.index(True) for r in rows}) > 1
  chex.assert_trees_all_equal(task.prepare(batch, None, False)["embedding"], captions[:, 0])
  tx, state = state_for(task, batch)
  new, metrics = jax.jit(lambda s, b: task.train_step(s, b, tx))(state, batch)
  assert np.isfinite(float(metrics["train/loss"]))
  assert not np.array_equal(new.params["generator"]["fc"]["kernel"], state.params["generator"]["fc"]["kernel"])


@pytest.fixture(scope="module")
def stage1_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stage1"))
  train_and_evaluate(stage_config(), workdir)
  return workdir


def test_stage2_trains_on_a_frozen_stage1(stage1_workdir, tmp_path):
  config = stage_config(stage=2)
  config.stackgan.stage1_workdir = stage1_workdir
  train_and_evaluate(config, str(tmp_path))
  mngr = ocp.CheckpointManager(os.path.join(stage1_workdir, "checkpoints"), item_names=("state",))
  s1 = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr = ocp.CheckpointManager(os.path.join(tmp_path, "checkpoints"), item_names=("state",))
  s2 = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  # Stage I rides along in Stage II's checkpoint, exactly as trained, and training did not touch it.
  chex.assert_trees_all_equal(s2["model_state"]["stage1"]["params"]["generator"], s1["params"]["generator"])
  chex.assert_trees_all_equal(s2["model_state"]["stage1"]["batch_stats"]["generator"],
                              s1["model_state"]["batch_stats"]["generator"])
  assert np.asarray(s2["params"]["generator"]["img"]["kernel"]).shape == (3, 3, 2, 1)  # 16x16 grey output
  assert os.path.exists(os.path.join(tmp_path, "plots", "samples_stage1_step000002.png"))


def test_stage2_refuses_a_missing_or_mismatched_stage1(stage1_workdir, tmp_path):
  config = stage_config(stage=2)
  with pytest.raises(UserError, match="stage1_workdir"):
    get_task(config, INFO)
  config.stackgan.stage1_workdir = str(tmp_path)
  with pytest.raises(UserError, match="config.json"):
    get_task(config, INFO)
  config.stackgan.stage1_workdir = stage1_workdir
  config.stackgan.embed_seed = 1
  with pytest.raises(UserError, match="embed_seed"):
    get_task(config, INFO)
  other = tmp_path / "other"
  other.mkdir()
  (other / "checkpoints").mkdir()
  (other / "config.json").write_text(json.dumps({"model": {"name": "dcgan"}, "data": {"name": "digits"}}))
  config.stackgan.embed_seed = 0
  config.stackgan.stage1_workdir = str(other)
  with pytest.raises(UserError, match="not stackgan_stage1"):
    get_task(config, INFO)
