"""Convolutional VAE on scikit-learn's digits (16x16, pixels in [0, 1], Bernoulli likelihood): the offline VAE run.

    python -m experiments.run --exp=vae_digits

Expected (measured here; no published number exists for this data set):
eval/elbo (nats per image on the 360 held-out digits, higher is better) rises
from about -106 at the first eval (step 250) to about -102 after 1,500 steps
(KL ~6.7 nats, reconstruction ~95 nats: the Bernoulli term includes the
entropy of the grey levels); ~1 CPU-minute, 1-3 minutes of wall time on 2
cores. plots/ holds prior samples, reconstructions and latent interpolations
after every eval.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.vae import vae_defaults


def get_config():
  c = base_config()
  c.task = "vae"
  c.model.name = "conv_vae"
  c.model.latents = 16
  c.model.widths = (32, 64)
  c.model.hidden = 256
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.normalize = "unit"
  c.vae = vae_defaults()
  c.train.steps = 1500
  c.train.batch_size = 64
  c.train.log_every = 10
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.eval.every = 250
  c.eval.batch_size = 360
  c.checkpoint.every = 500
  return c
