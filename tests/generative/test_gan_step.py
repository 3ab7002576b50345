"""The alternating GAN step: each sub-step changes only its own network, the full step changes both."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs.common import base_config
from jaxcnn import data as data_lib
from jaxcnn.tasks import TrainState, get_task
from jaxcnn.tasks.gan import LOSSES, discriminator_terms, gan_defaults, generator_term, stackgan_defaults
from jaxcnn.train import optim


def tiny_config(model, task="gan", conditional=False, image_size=8, **model_kwargs):
  c = base_config()
  c.task = task
  c.model.name = model
  for k, v in model_kwargs.items():
    c.model[k] = v
  c.data.name = "digits"
  c.data.image_size = image_size
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.conditional = conditional
  c.gan.fid_samples = 0
  c.train.batch_size = 8
  c.optim.name = "adam"
  c.optim.lr = 1e-2
  if task == "stackgan":
    c.stackgan = stackgan_defaults()
    c.stackgan.embed_dim = 12
  return c


CONFIGS = {
    "cgan_mlp": lambda: tiny_config("gan", conditional=True, latent_dim=6, g_hidden=(16,), d_hidden=(16,)),
    "dcgan": lambda: tiny_config("dcgan", image_size=16, latent_dim=6, g_width=4, d_width=4),  # BN in both nets
    "stackgan1": lambda: tiny_config("stackgan_stage1", task="stackgan", latent_dim=6, c_dim=3, gf_dim=4, df_dim=4,
                                     ef_dim=3),
}


def fresh_state(task, tx, batch):
  variables = dict(jax.jit(task.init)(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  opt_state = {k: t.init(params[k]) for k, t in tx.items()}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables, opt_state=opt_state,
                    ema_params={}, rng=jax.random.PRNGKey(1))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
  config = CONFIGS[request.param]()
  task = get_task(config, data_lib.dataset_info("digits"))
  schedule = optim.make_schedule(config.optim, config.train.steps)
  tx = task.optimizer(lambda c: optim.make_optimizer(c, schedule))
  batch = next(data_lib.train_iterator(config.data, global_batch_size=8, seed=0))
  batch = jax.tree.map(jnp.asarray, batch)
  prepared = task.prepare(dict(batch, z=task.latents(jax.random.PRNGKey(3), 8)), jax.random.PRNGKey(4), True)
  return request.param, task, tx, batch, prepared


def changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def own_stats(state, net):
  return state.model_state.get("batch_stats", {}).get(net, {})


def test_discriminator_substep_changes_only_the_discriminator(setup):
  name, task, tx, batch, prepared = setup
  state = fresh_state(task, tx, batch)
  new, metrics = jax.jit(lambda s, b: task.discriminator_step(s, b, tx, jax.random.PRNGKey(5)))(state, prepared)
  chex.assert_trees_all_equal(new.params["generator"], state.params["generator"])
  chex.assert_trees_all_equal(new.opt_state["generator"], state.opt_state["generator"])
  chex.assert_trees_all_equal(own_stats(new, "generator"), own_stats(state, "generator"))
  assert changed(new.params["discriminator"], state.params["discriminator"])
  assert changed(new.opt_state["discriminator"], state.opt_state["discriminator"])
  if name == "dcgan":
    assert changed(own_stats(new, "discriminator"), own_stats(state, "discriminator"))
  assert np.isfinite(metrics["train/d_loss"]) and metrics["train/d_grad_norm"] > 0


def test_generator_substep_changes_only_the_generator(setup):
  name, task, tx, batch, prepared = setup
  state = fresh_state(task, tx, batch)
  new, metrics = jax.jit(lambda s, b: task.generator_step(s, b, tx, jax.random.PRNGKey(6)))(state, prepared)
  chex.assert_trees_all_equal(new.params["discriminator"], state.params["discriminator"])
  chex.assert_trees_all_equal(new.opt_state["discriminator"], state.opt_state["discriminator"])
  chex.assert_trees_all_equal(own_stats(new, "discriminator"), own_stats(state, "discriminator"))
  assert changed(new.params["generator"], state.params["generator"])
  assert changed(new.opt_state["generator"], state.opt_state["generator"])
  if name == "dcgan":
    assert changed(own_stats(new, "generator"), own_stats(state, "generator"))
  assert np.isfinite(metrics["train/g_loss"]) and metrics["train/g_grad_norm"] > 0


def test_full_step_changes_both_and_uses_the_updated_discriminator(setup):
  name, task, tx, batch, _ = setup
  state = fresh_state(task, tx, batch)
  new, metrics = jax.jit(lambda s, b: task.train_step(s, b, tx))(state, batch)
  for net in ("generator", "discriminator"):
    assert changed(new.params[net], state.params[net])
    assert changed(new.opt_state[net], state.opt_state[net])
  assert {"train/loss", "train/d_loss", "train/g_loss", "train/d_grad_norm", "train/g_grad_norm"} <= set(metrics)
  # The step is D then G: its discriminator is exactly the D sub-step's result, with the same data and keys.
  rng = jax.random.fold_in(state.rng, state.step)
  z_rng, prep_rng, d_rng, _ = jax.random.split(rng, 4)
  prepared = task.prepare(dict(batch, z=task.latents(z_rng, 8)), prep_rng, True)
  d_only, _ = jax.jit(lambda s, b: task.discriminator_step(s, b, tx, d_rng))(state, prepared)
  chex.assert_trees_all_close(new.params["discriminator"], d_only.params["discriminator"], rtol=1e-6, atol=1e-7)
  if name == "stackgan1":
    assert {"train/kl", "train/d_wrong"} <= set(metrics)
  if name == "cgan_mlp":
    # CGAN: different labels -> a different generator loss (the condition reaches G and D).
    other = dict(batch, label=(batch["label"] + 1) % 10)
    _, m2 = jax.jit(lambda s, b: task.train_step(s, b, tx))(state, other)
    assert float(m2["train/g_loss"]) != float(metrics["train/g_loss"])


@pytest.mark.parametrize("kind", LOSSES)
def test_loss_terms(kind):
  real, fake = jnp.array([3.0, -1.0]), jnp.array([-2.0, 0.5])
  r, f = discriminator_terms(kind, real, fake)
  g = generator_term(kind, fake)
  expected = {
      "non_saturating": (np.log1p(np.exp(-real)), np.log1p(np.exp(fake)), np.log1p(np.exp(-fake))),
      "minimax": (np.log1p(np.exp(-real)), np.log1p(np.exp(fake)), -np.log1p(np.exp(fake))),
      "hinge": (np.maximum(0, 1 - real), np.maximum(0, 1 + fake), -fake),
      "least_squares": (0.5 * (real - 1) ** 2, 0.5 * fake ** 2, 0.5 * (fake - 1) ** 2),
  }[kind]
  np.testing.assert_allclose(r, expected[0], rtol=1e-6)
  np.testing.assert_allclose(f, expected[1], rtol=1e-6)
  np.testing.assert_allclose(g, expected[2], rtol=1e-6)


def test_discriminator_learning_rate_multiplier():
  config = CONFIGS["cgan_mlp"]()
  config.gan.d_lr_mult = 0.25
  task = get_task(config, data_lib.dataset_info("digits"))
  tx = task.optimizer(lambda c: optax.sgd(1.0))
  grads = {"w": jnp.ones(3)}
  g_up, _ = tx["generator"].update(grads, tx["generator"].init(grads))
  d_up, _ = tx["discriminator"].update(grads, tx["discriminator"].init(grads))
  np.testing.assert_allclose(d_up["w"], 0.25 * g_up["w"])
