"""Variational autoencoder: maximise the ELBO, report it in nats per image, draw samples and reconstructions.

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))

The expectation is a one-sample Monte Carlo estimate with the reparameterised
z (training: the step's key; eval: a fixed key, so eval numbers are
deterministic); the KL is in closed form. The likelihood is set by
`vae.likelihood`:
  bernoulli  the decoder gives logits, log p(x|z) = -BCE summed over pixels; data in [0, 1]
             (`data.normalize='unit'`), the usual choice for (grey-level) digits;
  gaussian   the decoder gives means, a fixed std `vae.sigma`; any normalisation.
Training minimises -(E[log p(x|z)] - beta * KL) per image (`vae.beta`, 1 = the
ELBO; Higgins et al.'s beta-VAE otherwise); `eval/elbo` is always the true
(beta = 1) bound, higher is better.

After every eval, `plots/` gets PNGs: samples decoded from fixed prior draws,
reconstructions of fixed held-out images (originals above reconstructions)
and linear interpolations between the codes of held-out pairs.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.errors import UserError, unknown
from jaxcnn.models.vae import gaussian_kl
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs

LIKELIHOODS = ("bernoulli", "gaussian")


def vae_defaults():
  """The `vae` config section with its defaults."""
  import ml_collections
  return ml_collections.ConfigDict({
      "likelihood": "bernoulli",   # bernoulli | gaussian
      "sigma": 0.1,                # gaussian likelihood: fixed std of p(x|z)
      "beta": 1.0,                 # weight of the KL term in the training loss
      "num_samples": 64,           # prior samples in the sample grid
      "num_reconstructions": 16,
      "interpolation_pairs": 4,
      "interpolation_steps": 10,
  })


class VAE(Task):
  best_metric = ("eval/elbo", "max")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    self.vae = vae_defaults()
    self.vae.update(dict(config.get("vae", {})))
    if self.vae.likelihood not in LIKELIHOODS:
      raise unknown("vae.likelihood", self.vae.likelihood, LIKELIHOODS)
    if self.vae.likelihood == "bernoulli" and config.data.normalize != "unit":
      raise UserError(f"vae.likelihood='bernoulli' needs pixels in [0, 1]: set data.normalize='unit' "
                      f"(got '{config.data.normalize}'), or use vae.likelihood='gaussian'")
    if float(self.vae.sigma) <= 0 or float(self.vae.beta) < 0:
      raise UserError(f"vae.sigma must be > 0 and vae.beta >= 0, got {self.vae.sigma} and {self.vae.beta}")
    self.image_size = int(config.data.image_size) or data_info.image_shape[0]
    self.channels = int(config.data.channels) or data_info.image_shape[2]
    self.model = create_model(config.model.name, **model_kwargs(
        config.model, config.train, axis_name, image_size=self.image_size, channels=self.channels))
    self._plot_fns = None
    self._held_out = None

  # --- likelihood --------------------------------------------------------------
  def log_likelihood(self, out, x):
    """log p(x|z) per image, summed over pixels (nats)."""
    out = out.astype(jnp.float32)
    if self.vae.likelihood == "bernoulli":
      ll = -optax.sigmoid_binary_cross_entropy(out, x)
    else:
      sigma = float(self.vae.sigma)
      ll = -0.5 * jnp.square((x - out) / sigma) - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi)
    return jnp.sum(ll.reshape((x.shape[0], -1)), axis=-1)

  def mean_image(self, out):
    """The decoder output as an image: E[x|z]."""
    return jax.nn.sigmoid(out) if self.vae.likelihood == "bernoulli" else out

  def elbo_terms(self, params, images, z_rng):
    out, mean, logvar = self.model.apply({"params": params}, images, z_rng=z_rng, train=True)
    return self.log_likelihood(out, images), gaussian_kl(mean, logvar)

  # --- task interface ----------------------------------------------------------
  def init(self, rng, batch):
    params_rng, z_rng = jax.random.split(rng)
    return self.model.init({"params": params_rng}, batch["image"], z_rng=z_rng)

  def loss(self, params, model_state, batch, rng):
    ll, kl = self.elbo_terms(params, batch["image"], rng)
    loss = jnp.mean(-ll + float(self.vae.beta) * kl)
    metrics = {"train/loss": loss, "train/elbo": jnp.mean(ll - kl), "train/recon_nll": -jnp.mean(ll),
               "train/kl": jnp.mean(kl)}
    return loss, (model_state, metrics)

  def eval_step(self, variables, batch):
    # A fixed key: the eval ELBO estimate is the same function of the parameters at every eval.
    ll, kl = self.elbo_terms(variables["params"], batch["image"], jax.random.PRNGKey(0))
    mask = batch["mask"]
    return {"elbo": jnp.sum((ll - kl) * mask), "recon_nll": jnp.sum(-ll * mask), "kl": jnp.sum(kl * mask),
            "count": jnp.sum(mask)}

  def on_eval(self, variables, step, workdir):
    self.write_plots(variables, os.path.join(workdir, "plots"), step)
    return {}

  # --- pictures ------------------------------------------------------------------
  def _value_range(self):
    return {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}.get(self.config.data.normalize)

  def _held_out_images(self):
    """The first held-out images (fixed across evals) for reconstructions and interpolations."""
    if self._held_out is None:
      from jaxcnn import data as data_lib
      need = max(int(self.vae.num_reconstructions), 2 * int(self.vae.interpolation_pairs))
      images = []
      for batch in data_lib.eval_iterator(self.config.data, global_batch_size=int(self.config.eval.batch_size),
                                          process_index=0, process_count=1):
        images.append(np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0])
        if sum(len(i) for i in images) >= need:
          break
      self._held_out = np.concatenate(images)[:need]
    return self._held_out

  def write_plots(self, variables, directory, step):
    """Samples, reconstructions and interpolations as PNGs (computed on every process, written by process 0)."""
    from jaxcnn.eval import grids
    if self._plot_fns is None:
      decode = lambda v, z: self.mean_image(self.model.apply(v, z, method="decode"))
      encode = lambda v, x: self.model.apply(v, x, method="encode")[0]
      self._plot_fns = jax.jit(decode), jax.jit(encode)
    decode, encode = self._plot_fns
    v = {"params": variables["params"]}
    seed = int(self.config.train.seed)
    z = jax.random.normal(jax.random.PRNGKey(seed + 1), (int(self.vae.num_samples), self.model.latents))
    samples = np.asarray(decode(v, z))
    held = self._held_out_images()
    n_rec, pairs, steps = int(self.vae.num_reconstructions), int(self.vae.interpolation_pairs), \
        int(self.vae.interpolation_steps)
    originals = held[:n_rec]
    recon = np.asarray(decode(v, encode(v, jnp.asarray(originals))))
    codes = encode(v, jnp.asarray(held[:2 * pairs]))
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    path = (1 - t) * codes[0::2, None, :] + t * codes[1::2, None, :]  # [pairs, steps, latents]
    interp = np.asarray(decode(v, path.reshape((pairs * steps, -1))))
    if jax.process_index() != 0:
      return []
    vr = self._value_range() or (float(min(held.min(), samples.min())), float(max(held.max(), samples.max())))
    ncol = int(np.ceil(np.sqrt(len(samples))))
    return [grids.save_grid(os.path.join(directory, f"vae_samples_step{step:06d}.png"), samples, ncol, vr),
            grids.save_rows(os.path.join(directory, f"vae_reconstructions_step{step:06d}.png"), [originals, recon], vr),
            grids.save_grid(os.path.join(directory, f"vae_interpolation_step{step:06d}.png"), interp, steps, vr)]
