"""The VAE's KL term against its closed form and a Monte Carlo estimate; the ELBO's likelihoods."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from experiments.configs import get_experiment
from jaxcnn import data as data_lib
from jaxcnn.errors import UserError
from jaxcnn.models.vae import gaussian_kl, reparameterize
from jaxcnn.tasks import get_task


def test_kl_closed_form_per_dimension():
  mean = np.array([[0.0, 1.0, -2.0]])
  logvar = np.array([[0.0, np.log(4.0), np.log(0.25)]])
  # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2 per dimension.
  expected = sum((m ** 2 + s2 - 1 - np.log(s2)) / 2 for m, s2 in zip(mean[0], np.exp(logvar[0])))
  assert float(gaussian_kl(mean, logvar)[0]) == pytest.approx(expected, rel=1e-6)
  assert float(gaussian_kl(np.zeros((1, 5)), np.zeros((1, 5)))[0]) == 0.0


def test_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(1, 4)).astype(np.float32)
  logvar = rng.normal(scale=0.5, size=(1, 4)).astype(np.float32)
  n = 200_000
  z = np.asarray(reparameterize(jax.random.PRNGKey(0), jnp.broadcast_to(mean, (n, 4)),
                                jnp.broadcast_to(logvar, (n, 4))), np.float64)
  std = np.exp(0.5 * logvar[0].astype(np.float64))
  log_q = scipy.stats.norm.logpdf(z, mean[0], std).sum(-1)
  log_p = scipy.stats.norm.logpdf(z).sum(-1)
  mc = np.mean(log_q - log_p)
  stderr = np.std(log_q - log_p) / np.sqrt(n)
  assert abs(mc - float(gaussian_kl(mean, logvar)[0])) < 4 * stderr
  # The samples have the posterior's moments (the reparameterisation is right).
  np.testing.assert_allclose(z.mean(0), mean[0], atol=0.02)
  np.testing.assert_allclose(z.std(0), std, rtol=0.02)


@pytest.fixture(scope="module")
def vae_task():
  config, _ = get_experiment("vae_digits")
  config.model.widths = (4, 8)
  config.model.hidden = 16
  config.model.latents = 3
  return config, get_task(config, data_lib.dataset_info("digits"))


def test_bernoulli_log_likelihood(vae_task):
  _, task = vae_task
  logits = jnp.array([[[[0.0], [2.0]]]])      # one 1x2 image
  x = jnp.array([[[[1.0], [0.25]]]])
  # log p = sum x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))
  p = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
  expected = np.sum(np.array([1.0, 0.25]) * np.log(p) + np.array([0.0, 0.75]) * np.log(1 - p))
  assert float(task.log_likelihood(logits, x)[0]) == pytest.approx(expected, rel=1e-5)


def test_gaussian_log_likelihood():
  config, _ = get_experiment("vae_digits")
  config.vae.likelihood = "gaussian"
  config.vae.sigma = 0.5
  task = get_task(config, data_lib.dataset_info("digits"))
  mu, x = jnp.full((1, 2, 2, 1), 0.3), jnp.array([0.1, 0.5, 0.9, 0.3]).reshape(1, 2, 2, 1)
  expected = scipy.stats.norm.logpdf(np.asarray(x).ravel(), 0.3, 0.5).sum()
  assert float(task.log_likelihood(mu, x)[0]) == pytest.approx(expected, rel=1e-5)


def test_elbo_loss_and_eval_agree_on_the_bound(vae_task):
  config, task = vae_task
  batch = jax.tree.map(jnp.asarray, next(data_lib.train_iterator(config.data, global_batch_size=16, seed=0)))
  params = jax.jit(task.init)(jax.random.PRNGKey(0), batch)["params"]
  loss, (_, metrics) = jax.jit(task.loss)(params, {}, batch, jax.random.PRNGKey(0))
  # beta = 1: the loss is minus the ELBO, which is reconstruction log-likelihood minus KL.
  assert float(loss) == pytest.approx(-float(metrics["train/elbo"]), rel=1e-6)
  assert float(metrics["train/elbo"]) == pytest.approx(-float(metrics["train/recon_nll"]) - float(metrics["train/kl"]),
                                                       rel=1e-6)
  sums = jax.jit(task.eval_step)({"params": params}, dict(batch, mask=jnp.ones(16)))
  assert float(sums["elbo"]) / 16 == pytest.approx(float(metrics["train/elbo"]), rel=1e-2)  # same fixed key 0
  config.vae.beta = 4.0
  beta_task = get_task(config, data_lib.dataset_info("digits"))
  loss4, (_, m4) = jax.jit(beta_task.loss)(params, {}, batch, jax.random.PRNGKey(0))
  assert float(loss4) == pytest.approx(float(m4["train/recon_nll"]) + 4.0 * float(m4["train/kl"]), rel=1e-6)
  config.vae.beta = 1.0


def test_bernoulli_needs_unit_pixels():
  config, _ = get_experiment("vae_digits")
  config.data.normalize = "standard"
  with pytest.raises(UserError, match="unit"):
    get_task(config, data_lib.dataset_info("digits"))
