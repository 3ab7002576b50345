"""StackGAN++: the tree and its discriminators (shapes, the paper's size), the losses, the alternating step, a run."""
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments import run
from experiments.configs import get_experiment
from jaxcnn import create_model
from jaxcnn import data as data_lib
from jaxcnn.errors import UserError
from jaxcnn.models.stackgan import upsample_nearest
from jaxcnn.tasks import TrainState, get_task
from jaxcnn.tasks.stackgan_v2 import color_consistency, pixel_mean_covariance, resize_to_scales
from jaxcnn.train import optim
from jaxcnn.train.writers import read_metrics
from jaxcnn.utils import param_count

INFO = data_lib.dataset_info("digits")
TINY = dict(latent_dim=6, c_dim=3, gf_dim=4, df_dim=4, r_num=1, base_size=8, num_branches=2)


# ------------------------------------------------------------------------------ the model

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes_per_scale(dtype):
  model = create_model("stackganpp", **dict(TINY, num_branches=3, channels=3), dtype=dtype)
  z, emb = jax.random.normal(jax.random.PRNGKey(0), (2, 6)), jax.random.normal(jax.random.PRNGKey(1), (2, 12))

  @jax.jit
  def run_all(z, emb):
    variables = model.init(jax.random.PRNGKey(2), z, emb)
    images, mu, logvar = model.apply(variables, z, emb, jax.random.PRNGKey(3), method="generate")
    mean_images = model.apply(variables, z, emb, method="generate")[0]
    outs = model.apply(variables, images, mu, method="discriminate")
    return images, mu, logvar, mean_images, outs, model.apply(variables, emb, method="condition")

  images, mu, logvar, mean_images, outs, condition = run_all(z, emb)
  assert len(images) == len(mean_images) == 3
  for img, size in zip(images, (8, 16, 32)):
    chex.assert_shape(img, (2, size, size, 3))
    chex.assert_type(img, jnp.float32)
    assert float(jnp.max(jnp.abs(img))) <= 1.0
  chex.assert_shape([mu, logvar], (2, 3))
  # With a key the condition is sampled around mu; without one it is mu.
  assert not np.allclose(images[-1], mean_images[-1])
  chex.assert_trees_all_close(condition, mu)
  assert len(outs) == 3
  for cond, uncond in outs:
    chex.assert_shape([cond, uncond], (2,))
    chex.assert_type([cond, uncond], jnp.float32)


def test_discriminator_condition_enters_only_the_conditional_logit():
  model = create_model("stackganpp", **TINY, channels=1)
  z, emb = jnp.ones((2, 6)), jnp.ones((2, 12))

  @jax.jit
  def both(z, emb):
    variables = model.init(jax.random.PRNGKey(0), z, emb)
    images = model.apply(variables, z, emb, method="generate")[0]
    return [model.apply(variables, images, c, method="discriminate") for c in (jnp.zeros((2, 3)), jnp.ones((2, 3)))]

  a, b = both(z, emb)
  for (ca, ua), (cb, ub) in zip(a, b):
    chex.assert_trees_all_equal(ua, ub)
    assert not np.allclose(ca, cb)


def torch_layer_count(gf=64, df=64, c=128, z=100, t=1024, r=2):
  """Parameters of the authors' StackGAN-v2 networks at 64/128/256, layer by layer (torch layouts, bias=False
  where the reference code has it; BatchNorm weight + bias)."""
  def conv(i, o, k, bias=False):
    return k * k * i * o + (o if bias else 0)

  def bn(ch):
    return 2 * ch

  def up(i, o):            # nearest x2, conv3x3(i, 2o), BN(2o), GLU
    return conv(i, 2 * o, 3) + bn(2 * o)

  def next_stage(w):       # joint conv3x3(w + c, 2w) BN GLU, r x ResBlock(w), up(w, w/2)
    res = conv(w, 2 * w, 3) + bn(2 * w) + conv(w, w, 3) + bn(w)
    return conv(w + c, 2 * w, 3) + bn(2 * w) + r * res + up(w, w // 2)

  ca = t * 4 * c + 4 * c
  init_stage = (z + c) * (16 * gf) * 16 * 2 + bn((16 * gf) * 16 * 2)
  init_stage += up(16 * gf, 8 * gf) + up(8 * gf, 4 * gf) + up(4 * gf, 2 * gf) + up(2 * gf, gf)
  images = conv(gf, 3, 3) + conv(gf // 2, 3, 3) + conv(gf // 4, 3, 3)
  g = ca + init_stage + next_stage(gf) + next_stage(gf // 2) + images

  encode16 = (conv(3, df, 4) + conv(df, 2 * df, 4) + bn(2 * df) + conv(2 * df, 4 * df, 4) + bn(4 * df)
              + conv(4 * df, 8 * df, 4) + bn(8 * df))
  heads = conv(8 * df + c, 8 * df, 3) + bn(8 * df) + 2 * conv(8 * df, 1, 4, bias=True)
  d64 = encode16 + heads
  d128 = encode16 + conv(8 * df, 16 * df, 4) + bn(16 * df) + conv(16 * df, 8 * df, 3) + bn(8 * df) + heads
  d256 = (encode16 + conv(8 * df, 16 * df, 4) + bn(16 * df) + conv(16 * df, 32 * df, 4) + bn(32 * df)
          + conv(32 * df, 16 * df, 3) + bn(16 * df) + conv(16 * df, 8 * df, 3) + bn(8 * df) + heads)
  return g, (d64, d128, d256)


def test_paper_size_parameter_counts():
  """birds_3stages: GF_DIM 64, DF_DIM 64, EMBEDDING_DIM 128, Z_DIM 100, R_NUM 2, 1024-d text, 64/128/256."""
  model = create_model("stackganpp")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 100)), jnp.zeros((2, 1024))))
  g, ds = torch_layer_count()
  assert param_count(shapes["params"]["generator"]) == g == 21_239_696
  assert [param_count(shapes["params"]["discriminator"][f"d{i}"]) for i in range(3)] == list(ds)
  assert list(ds) == [5_723_906, 18_834_178, 71_269_122]


def test_bad_sizes_are_user_errors():
  with pytest.raises(UserError, match="base_size"):
    model = create_model("stackganpp", base_size=12)
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 100)), jnp.zeros((1, 1024)))


# ------------------------------------------------------------------------------ losses

def test_color_consistency_zero_for_consistent_scales_positive_otherwise():
  small = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4, 3), minval=-1, maxval=1)
  large = upsample_nearest(small)               # every pixel 4 times: same mean and covariance
  assert float(color_consistency([small, large])) == pytest.approx(0.0, abs=1e-7)
  shifted = large + jnp.asarray([0.1, 0.0, -0.2])
  mean_only = color_consistency([small, shifted])
  assert float(mean_only) == pytest.approx((0.01 + 0.04) / 3, rel=1e-4)  # lambda_mean 1 x MSE of the means
  scaled = 2 * large                            # same mean (x2), covariance x4
  _, cov = pixel_mean_covariance(small)
  mu, _ = pixel_mean_covariance(small)
  expected = float(jnp.mean(jnp.square(mu)) + 5 * jnp.mean(jnp.square(3 * cov)))
  assert float(color_consistency([small, scaled])) == pytest.approx(expected, rel=1e-4)
  # Covariance is over pixels, divided by H W, per image.
  x = np.asarray(small).reshape(3, 16, 3)
  np.testing.assert_allclose(np.asarray(cov), [np.cov(xi.T, bias=True) for xi in x], rtol=1e-4, atol=1e-6)
  # The smaller scale is the target: no gradient reaches it.
  g_small, g_large = jax.grad(lambda s, l: color_consistency([s, l]), argnums=(0, 1))(small, scaled)
  assert not np.any(np.asarray(g_small)) and np.any(np.asarray(g_large))


def test_reals_are_resized_as_pil_bilinear():
  """The authors resize each crop with PIL's bilinear filter (antialiased when shrinking)."""
  from PIL import Image
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 1))
  small, large = resize_to_scales(images, (4, 8, 16))[1:]
  assert large is images
  chex.assert_shape(small, (2, 8, 8, 1))
  for k in range(2):
    pil = Image.fromarray(np.asarray(images[k, :, :, 0]), mode="F").resize((8, 8), Image.BILINEAR)
    np.testing.assert_allclose(np.asarray(small[k, :, :, 0]), np.asarray(pil), atol=1e-6)


def tiny_config(uncond=1.0, color=1.0, steps=4):
  config, _ = get_experiment("stackganpp_digits")
  for k, v in TINY.items():
    config.model[k] = v
  config.data.image_size = 16
  config.stackgan.embed_dim = 12
  config.stackgan.uncond_coeff = uncond
  config.stackganpp.color_coeff = color
  config.gan.fid_samples = 0
  config.gan.grid_size = 2
  config.train.steps = steps
  config.train.batch_size = 8
  config.train.log_every = 1
  config.optim.lr = 1e-2
  config.eval.every = 0
  config.checkpoint.every = 2
  config.checkpoint.use_async = False
  return config


def state_for(task, batch):
  schedule = optim.make_schedule(task.config.optim, 10)
  tx = task.optimizer(lambda c: optim.make_optimizer(c, schedule))
  variables = dict(jax.jit(task.init)(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  return tx, TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                        opt_state={k: t.init(params[k]) for k, t in tx.items()}, ema_params={},
                        rng=jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def setup():
  task = get_task(tiny_config(), INFO)
  batch = jax.tree.map(jnp.asarray, next(data_lib.train_iterator(task.config.data, global_batch_size=8, seed=0)))
  tx, state = state_for(task, batch)
  prepared = task.prepare(dict(batch, z=task.latents(jax.random.PRNGKey(3), 8)), None, True)
  fakes = task.generate(state.params, state.model_state, prepared, jax.random.PRNGKey(4), True)[0]
  return task, tx, state, batch, prepared, fakes


@pytest.mark.parametrize("uncond", [0.0, 1.0])
def test_discriminator_loss_is_the_authors_per_scale_sum(setup, uncond):
  task, _, state, _, b, fakes = setup
  task.sg.uncond_coeff = uncond
  try:
    loss, _, metrics = task.discriminator_loss(state.params, state.model_state, b, fakes)
  finally:
    task.sg.uncond_coeff = 1.0
  ms = state.model_state
  mu = task.condition(state.params, b["embedding"])
  reals = resize_to_scales(b["image"], (8, 16))
  real = task.discriminate(state.params, ms, reals, mu, True)[0]
  wrong = task.discriminate(state.params, ms, reals, jnp.roll(mu, 1, 0), True)[0]
  fake = task.discriminate(state.params, ms, fakes, mu, True)[0]
  mismatch = np.asarray(b["label"]) != np.roll(np.asarray(b["label"]), 1)
  sp, total = jax.nn.softplus, 0.0
  for i in range(2):
    l_real, l_fake = np.mean(sp(-real[i][0])), np.mean(sp(fake[i][0]))
    l_wrong = np.mean(np.asarray(sp(wrong[i][0]))[mismatch])
    if uncond:
      per = l_real + l_wrong + l_fake + 2 * np.mean(sp(-real[i][1])) + np.mean(sp(fake[i][1]))
    else:
      per = l_real + 0.5 * (l_wrong + l_fake)
    assert float(metrics[f"train/d_loss_{8 * 2 ** i}px"]) == pytest.approx(float(per), rel=1e-5)
    total += per
  assert float(loss) == pytest.approx(float(total), rel=1e-5)


def test_generator_loss_terms(setup):
  task, _, state, _, b, _ = setup
  fakes, extra, _ = task.generate(state.params, state.model_state, b, jax.random.PRNGKey(5), True)
  loss, metrics = task.generator_loss(state.params, state.model_state, b, fakes, extra)
  outs = task.discriminate(state.params, state.model_state, fakes, extra["mu"], True)[0]
  sp = jax.nn.softplus
  adv = sum(np.mean(sp(-c)) + np.mean(sp(-u)) for c, u in outs)
  mu, logvar = np.asarray(extra["mu"]), np.asarray(extra["logvar"])
  kl = np.mean(0.5 * (mu ** 2 + np.exp(logvar) - 1 - logvar))
  color = float(color_consistency(fakes))
  assert color > 0
  assert float(metrics["train/g_adv"]) == pytest.approx(float(adv), rel=1e-5)
  assert float(loss) == pytest.approx(float(adv) + 2.0 * kl + 1.0 * color, rel=1e-5)


def test_each_discriminator_sees_only_its_own_loss_and_one_adam_is_the_authors_separate_ones(setup):
  task, _, state, _, b, fakes = setup
  fakes = jax.lax.stop_gradient(fakes)

  def losses(d_params):
    params = {**state.params, "discriminator": d_params}
    return task.discriminator_losses(params, state.model_state, b, fakes)[0]

  d_params = state.params["discriminator"]
  grad_total = jax.jit(jax.grad(lambda p: sum(losses(p))))
  grad_own = jax.jit(lambda p, i: jax.grad(lambda q: losses(q)[i])(p), static_argnums=1)
  total = grad_total(d_params)
  for i in range(2):
    own = grad_own(d_params, i)
    chex.assert_trees_all_close(own[f"d{i}"], total[f"d{i}"], rtol=1e-5, atol=1e-7)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(own[f"d{1 - i}"]))
  # One Adam over the union, three steps, = one Adam per D on its own loss.
  adam = optax.adam(1e-2, b1=0.5)
  union, union_state = d_params, adam.init(d_params)
  parts = {k: (v, adam.init(v)) for k, v in d_params.items()}
  for _ in range(3):
    updates, union_state = adam.update(grad_total(union), union_state)
    union = optax.apply_updates(union, updates)
    current = {k: p for k, (p, _) in parts.items()}
    for i, k in enumerate(sorted(parts)):
      upd, s = adam.update(grad_own(current, i)[k], parts[k][1])
      parts[k] = (optax.apply_updates(current[k], upd), s)
  chex.assert_trees_all_close(union, {k: p for k, (p, _) in parts.items()}, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ the alternating step

def changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_each_substep_changes_only_its_network(setup):
  task, tx, state, batch, prepared, _ = setup
  d_new, _ = jax.jit(lambda s, b: task.discriminator_step(s, b, tx, jax.random.PRNGKey(5)))(state, prepared)
  chex.assert_trees_all_equal(d_new.params["generator"], state.params["generator"])
  chex.assert_trees_all_equal(d_new.opt_state["generator"], state.opt_state["generator"])
  chex.assert_trees_all_equal(d_new.model_state["batch_stats"]["generator"],
                              state.model_state["batch_stats"]["generator"])
  for i in range(2):  # every scale's D learns
    assert changed(d_new.params["discriminator"][f"d{i}"], state.params["discriminator"][f"d{i}"])
    assert changed(d_new.model_state["batch_stats"]["discriminator"][f"d{i}"],
                   state.model_state["batch_stats"]["discriminator"][f"d{i}"])
  g_new, metrics = jax.jit(lambda s, b: task.generator_step(s, b, tx, jax.random.PRNGKey(6)))(state, prepared)
  chex.assert_trees_all_equal(g_new.params["discriminator"], state.params["discriminator"])
  chex.assert_trees_all_equal(g_new.opt_state["discriminator"], state.opt_state["discriminator"])
  chex.assert_trees_all_equal(g_new.model_state["batch_stats"]["discriminator"],
                              state.model_state["batch_stats"]["discriminator"])
  gen = g_new.params["generator"]
  for name in ("ca", "tree"):
    assert changed(gen[name], state.params["generator"][name])
  for leaf in ("img0", "img1", "branch1_joint", "fc"):  # trunk, branch and both image heads
    assert changed(gen["tree"][leaf], state.params["generator"]["tree"][leaf])
  assert {"train/g_adv_8px", "train/g_adv_16px", "train/color", "train/kl"} <= set(metrics)
  full, metrics = jax.jit(lambda s, b: task.train_step(s, b, tx))(state, batch)
  assert changed(full.params["generator"], state.params["generator"])
  assert changed(full.params["discriminator"], state.params["discriminator"])
  assert np.isfinite(float(metrics["train/loss"]))


def test_wrong_pairs_on_the_pmap_path_are_the_global_batch_rolled():
  task = get_task(tiny_config(), INFO, axis_name="batch")
  n = jax.local_device_count()
  x = jnp.arange(2 * n).reshape((n, 2))
  rolled = jax.pmap(task.roll_batch, axis_name="batch")(x)
  np.testing.assert_array_equal(np.asarray(rolled).reshape(-1), np.roll(np.arange(2 * n), 1))


def test_config_errors():
  config = tiny_config()
  config.data.image_size = 32
  with pytest.raises(UserError, match="data.image_size=16"):
    get_task(config, INFO)
  config = tiny_config()
  config.model.name = "stackgan_stage1"
  with pytest.raises(UserError, match="stackganpp"):
    get_task(config, INFO)


# ------------------------------------------------------------------------------ a run through the CLI

def run_args(workdir, steps=4):
  args = [f"--config.model.{k}={v}" for k, v in TINY.items()]
  args += ["--config.data.image_size=16", "--config.stackgan.embed_dim=12", "--config.gan.fid_samples=20",
           "--config.gan.grid_size=2", f"--config.train.steps={steps}", "--config.train.batch_size=8",
           "--config.train.log_every=1", "--config.eval.every=2", "--config.checkpoint.every=2",
           "--config.checkpoint.use_async=false"]
  return ["--exp=stackganpp_digits", f"--workdir={workdir}"] + args


def checkpoint_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stackganpp"))
  assert run.main(run_args(workdir)) == 0
  return workdir


def test_runs_end_to_end(cli_run):
  summary = json.load(open(os.path.join(cli_run, "summary.json")))
  assert summary["model"] == "stackganpp" and summary["step"] == 4
  for key in ("eval/d_real", "eval/fid", "eval/inception_score", "eval/cond_accuracy"):
    assert np.isfinite(summary[key]), key
  assert "digits-16x16x1" in summary["eval/fid_extractor"]  # metrics on the largest scale
  train = [r for r in read_metrics(os.path.join(cli_run, "metrics.jsonl")) if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/d_loss_8px"]) and np.isfinite(r["train/color"]) for r in train)
  for step in (2, 4):
    for name in ("samples_step", "samples_8px_step"):
      assert os.path.exists(os.path.join(cli_run, "plots", f"{name}{step:06d}.png"))
  state = checkpoint_state(cli_run)
  assert set(state["params"]["discriminator"]) == {"d0", "d1"}
  assert set(state["opt_state"]) == {"generator", "discriminator"}


def test_resume_is_exact(cli_run, tmp_path):
  """Killed after the step-2 checkpoint: the resumed run ends with the same networks and optimizer states."""
  workdir = str(tmp_path / "resumed")
  os.makedirs(os.path.join(workdir, "checkpoints"))
  shutil.copytree(os.path.join(cli_run, "checkpoints", "2"), os.path.join(workdir, "checkpoints", "2"))
  assert run.main(run_args(workdir)) == 0
  logged = [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  assert logged == [3, 4]
  chex.assert_trees_all_equal(checkpoint_state(workdir), checkpoint_state(cli_run))


def test_cub_config_is_the_papers_tree():
  config, _ = get_experiment("stackganpp_cub")
  task = get_task(config, data_lib.dataset_info("cub_stackgan"))
  assert task.sizes == (64, 128, 256) and task.image_size == 256
  m = task.model
  assert (m.gf_dim, m.df_dim, m.c_dim, m.latent_dim, m.r_num) == (64, 64, 128, 100, 2)
  assert task.sg.embedding == "data" and task.sg.uncond_coeff == 1.0 and task.pp.color_coeff == 0.0
