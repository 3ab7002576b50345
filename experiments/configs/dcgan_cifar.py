"""DCGAN (Radford et al. 2016) on CIFAR-10 32x32: generator 4 -> 8 -> 16 -> 32, ngf = ndf = 64.

    python -m experiments.run --exp=dcgan_cifar

Needs CIFAR-10 prepared for tfds (`python -m jaxcnn.data.prepare cifar10`).
Paper recipe: Adam(2e-4, b1=0.5), batch 128, N(0, 0.02) init, non-saturating
loss. Literature FIDs for DCGAN on CIFAR-10 use Inception-v3 features (about
37, Heusel et al. 2017, with 50k samples); this run's eval/fid uses the
project's CIFAR-10 LeNet classifier (named in eval/fid_extractor: Inception-v3
weights cannot be downloaded here), so the numbers are not comparable. Not
measured here (no CIFAR-10 offline).
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults


def get_config():
  c = base_config()
  c.task = "gan"
  c.model.name = "dcgan"
  c.model.latent_dim = 100
  c.model.g_width = 64
  c.model.d_width = 64
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.fid_samples = 10_000
  c.train.steps = 39_000           # 100 epochs at batch 128
  c.train.batch_size = 128
  c.train.log_every = 100
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "constant"
  c.eval.every = 2000
  c.eval.batch_size = 1000
  c.checkpoint.every = 2000
  return c
