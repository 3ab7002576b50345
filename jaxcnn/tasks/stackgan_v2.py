"""StackGAN++ training (Zhang et al. 2018) as a trainer plug-in: task 'stackganpp', model 'stackganpp'.

The train state is the GAN task's: `params` = {'generator': the tree, 'discriminator': D_0 .. D_{n-1}}, one
optimizer per network, one jitted step with the D update then the G update (see `jaxcnn.tasks.gan`). Conditions
are those of the StackGAN task (`stackgan` section: class-label embeddings offline, the data's text embeddings
with `stackgan.embedding='data'`, Conditioning Augmentation KL weight `stackgan.kl_coeff`).

Per step, as the authors' trainer (code/trainer.py, condGANTrainer):
  * the real batch is resized to every scale of the tree (bilinear with antialiasing, as the authors' PIL
    resize of each crop); `data.image_size` is the largest scale;
  * D's condition is the Conditioning Augmentation mean mu of the batch's embeddings (no gradient in the D
    step; in the G step the gradient reaches the CA through it, as the authors');
  * D_i's loss, with c = `stackgan.uncond_coeff` (the authors' 1.0 for birds) and the wrong pairs being the real
    images with the batch's embeddings rolled by one over the global batch (pairs of the same class left out):
      c > 0:  L_real + L_wrong + L_fake + c (L_ureal + L_uwrong + L_ufake), where the unconditional logit of a
              wrong pair is the real image's, so L_uwrong = L_ureal (the authors draw other real images there);
      c = 0:  L_real + (L_wrong + L_fake) / 2;
    the discriminator loss is the sum over scales (each D_i only sees its own term: `MultiScaleDiscriminator`);
  * G's loss: the sum over scales of G's adversarial terms (+ c x the unconditional ones),
    `stackgan.kl_coeff` x the CA KL (mean over batch and dimensions) and `stackganpp.color_coeff` x the colour
    consistency between consecutive scales (`color_consistency`; the authors use it for unconditional
    generation, 0 for birds).
Evaluation: FID / Inception Score / cond_accuracy on the largest scale (GAN.on_eval), `eval/d_real` of the
largest scale's D, and a sample grid per scale: `plots/samples_step<N>.png` (largest), `samples_<S>px_step<N>.png`.
"""
from typing import List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.models.stackgan_v2 import scale_sizes
from jaxcnn.models.vae import gaussian_kl
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import model_kwargs
from jaxcnn.tasks.gan import GAN, StackGAN, discriminator_terms, generator_term, stackgan_defaults


def stackganpp_defaults() -> ml_collections.ConfigDict:
  """The `stackganpp` config section with its defaults."""
  return ml_collections.ConfigDict({
      "color_coeff": 0.0,          # colour-consistency weight (the authors: 0 for text-to-image, 50 unconditional)
      "color_lambda_mean": 1.0,    # the paper's lambda_1 (pixel means)
      "color_lambda_cov": 5.0,     # the paper's lambda_2 (pixel covariances)
  })


def _section(defaults: ml_collections.ConfigDict, section) -> ml_collections.ConfigDict:
  """A config section over its defaults."""
  if section is not None:
    defaults.update(dict(section))
  return defaults


def resize_to_scales(images, sizes) -> List[jax.Array]:
  """[B, S, S, C] -> one image batch per size (bilinear, antialiased when shrinking); the largest is `images`."""
  b, _, _, c = images.shape
  return [images if s == images.shape[1] else
          jax.image.resize(images, (b, s, s, c), "linear", antialias=True) for s in sizes]


def pixel_mean_covariance(images):
  """Per image: the mean colour [B, C] and the colour covariance over pixels [B, C, C] (divided by H W)."""
  b, h, w, c = images.shape
  x = images.reshape((b, h * w, c)).astype(jnp.float32)
  mean = jnp.mean(x, axis=1)
  centred = x - mean[:, None, :]
  return mean, jnp.einsum("bpi,bpj->bij", centred, centred) / (h * w)


def color_consistency(images: List[jax.Array], lambda_mean=1.0, lambda_cov=5.0):
  """Sum over consecutive scales of lambda_mean MSE(means) + lambda_cov MSE(covariances) of pixel colours.

  The smaller scale of each pair is the target (no gradient through it), as the authors' code; MSE averages
  over the batch and the entries (the paper writes squared norms; the authors' code, followed here, means).
  """
  total = jnp.zeros((), jnp.float32)
  for small, large in zip(images[:-1], images[1:]):
    mu_s, cov_s = pixel_mean_covariance(jax.lax.stop_gradient(small))
    mu_l, cov_l = pixel_mean_covariance(large)
    total = total + lambda_mean * jnp.mean(jnp.square(mu_l - mu_s)) + lambda_cov * jnp.mean(jnp.square(cov_l - cov_s))
  return total


class StackGANpp(StackGAN):
  """StackGAN++: the generator tree and its per-scale discriminators trained together (one stage)."""

  def __init__(self, config, data_info, axis_name=None):
    # The StackGAN task's conditions (label table, held-out embeddings), without its two-stage set-up.
    if config.model.name != "stackganpp":
      raise UserError(f"task 'stackganpp' trains model stackganpp, got '{config.model.name}'")
    self.sg = _section(stackgan_defaults(), config.get("stackgan"))
    self.pp = _section(stackganpp_defaults(), config.get("stackganpp"))
    if self.sg.embedding not in ("label", "data"):
      raise unknown("stackgan.embedding", self.sg.embedding, ("label", "data"))
    if float(self.pp.color_coeff) < 0:
      raise UserError(f"stackganpp.color_coeff must be >= 0, got {self.pp.color_coeff}")
    if self.sg.embedding == "label":
      table = np.random.default_rng(int(self.sg.embed_seed)).normal(
          size=(int(data_info.num_classes), int(self.sg.embed_dim)))
      self.label_table = table.astype(np.float32)
    self.stage, self.stage1, self._conditions = 1, None, None
    GAN.__init__(self, config, data_info, axis_name)
    if self.gan.conditional:
      raise UserError("StackGAN++ is conditioned on embeddings: leave gan.conditional False")

  def make_model(self, config, axis_name):
    model = create_model(config.model.name, **model_kwargs(config.model, config.train, axis_name,
                                                           channels=self.channels))
    if model.sizes[-1] != self.image_size:
      raise UserError(f"stackganpp with base_size={model.base_size} and num_branches={model.num_branches} makes "
                      f"{model.sizes[-1]}x{model.sizes[-1]} images, but data.image_size={self.image_size}: "
                      f"set data.image_size={model.sizes[-1]}")
    return model

  @property
  def sizes(self):
    return scale_sizes(self.model.base_size, self.model.num_branches)

  def latents(self, rng, n):
    return jax.random.normal(rng, (n, self.model.latent_dim), jnp.float32)

  def init(self, rng, batch):
    n = batch["image"].shape[0]
    if self.sg.embedding == "data":
      batch = dict(batch, embedding=jnp.zeros((n, int(self.sg.embed_dim)), jnp.float32))
    batch = self.prepare(batch, None, False)
    return self.model.init(rng, jnp.zeros((n, self.model.latent_dim)), batch["embedding"], train=False)

  # --- the networks --------------------------------------------------------------
  def generate(self, params, model_state, batch, rng, train):
    """([fake images per scale, smallest first], {'mu', 'logvar'}, model_state)."""
    (fakes, mu, logvar), model_state = self._apply(params, model_state, "generate", batch["z"], batch["embedding"],
                                                   rng, train=train)
    return fakes, {"mu": mu, "logvar": logvar}, model_state

  def condition(self, params, embedding):
    """D's condition: the CA mean of G's current parameters."""
    return self.model.apply({"params": params}, embedding, method="condition")

  def discriminate(self, params, model_state, images, condition, train):
    """([(cond_logits, uncond_logits) per scale], model_state)."""
    return self._apply(params, model_state, "discriminate", list(images), condition, train=train)

  # --- losses --------------------------------------------------------------------
  def discriminator_losses(self, params, model_state, batch, fakes):
    """([D_i's loss per scale], model_state, metrics)."""
    kind, c = self.gan.loss, float(self.sg.uncond_coeff)
    mu = jax.lax.stop_gradient(self.condition(params, batch["embedding"]))
    reals = resize_to_scales(batch["image"], self.sizes)
    # A "mismatched" pair of the same class is no mismatch: leave it out.
    mismatch = (batch["label"] != self.roll_batch(batch["label"])).astype(jnp.float32)
    real_out, model_state = self.discriminate(params, model_state, reals, mu, True)
    wrong_out, model_state = self.discriminate(params, model_state, reals, self.roll_batch(mu), True)
    fake_out, model_state = self.discriminate(params, model_state, fakes, mu, True)
    losses, metrics = [], {}
    for size, (real, ureal), (wrong, _), (fake, ufake) in zip(self.sizes, real_out, wrong_out, fake_out):
      real_t, fake_t = discriminator_terms(kind, real, fake)
      wrong_t = discriminator_terms(kind, real, wrong)[1]
      wrong_loss = jnp.sum(wrong_t * mismatch) / jnp.maximum(jnp.sum(mismatch), 1.0)
      if c > 0:
        ureal_t, ufake_t = discriminator_terms(kind, ureal, ufake)
        loss = jnp.mean(real_t) + wrong_loss + jnp.mean(fake_t) + c * (2 * jnp.mean(ureal_t) + jnp.mean(ufake_t))
      else:
        loss = jnp.mean(real_t) + 0.5 * (wrong_loss + jnp.mean(fake_t))
      losses.append(loss)
      metrics[f"train/d_loss_{size}px"] = loss
    real, wrong, fake = real_out[-1][0], wrong_out[-1][0], fake_out[-1][0]
    metrics.update({"train/d_real": jnp.mean(jax.nn.sigmoid(real)), "train/d_wrong": jnp.mean(jax.nn.sigmoid(wrong)),
                    "train/d_fake": jnp.mean(jax.nn.sigmoid(fake))})
    return losses, model_state, metrics

  def discriminator_loss(self, params, model_state, batch, fakes):
    losses, model_state, metrics = self.discriminator_losses(params, model_state, batch, fakes)
    loss = sum(losses)
    metrics["train/d_loss"] = loss
    return loss, model_state, metrics

  def generator_loss(self, params, model_state, batch, fakes, extra):
    c = float(self.sg.uncond_coeff)
    outs, _ = self.discriminate(params, model_state, fakes, extra["mu"], True)
    metrics, adv = {}, jnp.zeros((), jnp.float32)
    for size, (logits, ulogits) in zip(self.sizes, outs):
      term = jnp.mean(generator_term(self.gan.loss, logits))
      if c > 0:
        term = term + c * jnp.mean(generator_term(self.gan.loss, ulogits))
      metrics[f"train/g_adv_{size}px"] = term
      adv = adv + term
    kl = jnp.mean(gaussian_kl(extra["mu"], extra["logvar"])) / extra["mu"].shape[-1]
    color = color_consistency(fakes, float(self.pp.color_lambda_mean), float(self.pp.color_lambda_cov))
    loss = adv + float(self.sg.kl_coeff) * kl + float(self.pp.color_coeff) * color
    metrics.update({"train/g_loss": loss, "train/g_adv": adv, "train/kl": kl, "train/color": color})
    return loss, metrics

  # --- eval ----------------------------------------------------------------------
  def eval_step(self, variables, batch):
    batch = self.prepare(batch, None, False)
    state = {k: v for k, v in variables.items() if k != "params"}
    mu = self.condition(variables["params"], batch["embedding"])
    outs, _ = self.discriminate(variables["params"], state, resize_to_scales(batch["image"], self.sizes), mu, False)
    logits = outs[-1][0]
    return {"d_real": jnp.sum(jax.nn.sigmoid(logits) * batch["mask"]), "count": jnp.sum(batch["mask"])}

  def sample_scales(self, variables, z, conditions, rng):
    """Generated images at every scale (smallest first) for latents z and `conditions`, BN in inference mode."""
    if "sample_scales" not in self._fns:
      def fn(variables, batch, rng):
        state = {k: v for k, v in variables.items() if k != "params"}
        return self.generate(variables["params"], state, batch, rng, False)[0]
      self._fns["sample_scales"] = jax.jit(fn)
    batch = self.prepare({"z": z, **{k: jnp.asarray(v) for k, v in conditions.items()}}, None, False)
    return self._fns["sample_scales"](variables, batch, rng)

  def sample(self, variables, z, conditions, rng):
    """The largest scale: what FID, Inception Score and cond_accuracy are computed on."""
    return self.sample_scales(variables, z, conditions, rng)[-1]

  def write_grid(self, variables, path, rng):
    """One grid per scale from the same fixed latents and conditions; the largest under the GAN task's name."""
    from jaxcnn.eval import grids
    g = int(self.gan.grid_size)
    scales = self.sample_scales(variables, self.latents(jax.random.fold_in(rng, 0), g * g),
                                self.grid_conditions(g * g), jax.random.fold_in(rng, 1))
    if jax.process_index() == 0:
      for size, images in zip(self.sizes, scales):
        out = path if size == self.sizes[-1] else path.replace("samples_", f"samples_{size}px_")
        grids.save_grid(out, np.asarray(images), g, (-1.0, 1.0))
