"""Convolutional VAE on MNIST (pixels in [0, 1], Bernoulli likelihood, 20 latents).

    python -m experiments.run --exp=vae_mnist

Needs MNIST prepared for tfds (`python -m jaxcnn.data.prepare mnist`).
Reference: the flax VAE example (an MLP VAE, 20 latents, after Kingma &
Welling 2014 and pytorch/examples/vae) reports a test ELBO of -107.05 +- 0.25
nats per image after 30 epochs (google/flax examples/vae/README.md). This
convolutional VAE should reach that or better in the same 30 epochs (14,070
steps of 128); not measured here (no MNIST offline).
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.vae import vae_defaults


def get_config():
  c = base_config()
  c.task = "vae"
  c.model.name = "conv_vae"
  c.model.latents = 20
  c.model.widths = (32, 64)
  c.model.hidden = 512
  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.normalize = "unit"
  c.vae = vae_defaults()
  c.train.steps = 14_070           # 30 epochs of 60,000 at batch 128
  c.train.batch_size = 128
  c.train.log_every = 50
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "constant"
  c.eval.every = 1000
  c.eval.batch_size = 1000
  c.checkpoint.every = 2000
  return c
