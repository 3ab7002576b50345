"""DCGAN (Radford et al. 2016) on MNIST resized to 32x32: generator 4 -> 8 -> 16 -> 32, ngf = ndf = 64.

    python -m experiments.run --exp=dcgan_mnist

Needs MNIST prepared for tfds (`python -m jaxcnn.data.prepare mnist`). The
paper's recipe: Adam(2e-4, b1=0.5), batch 128, weights N(0, 0.02), the
non-saturating loss. Expected: legible digits in plots/ within the first
epoch (as the paper's and the PyTorch example's MNIST runs); eval/fid uses
the project's MNIST classifier (named in eval/fid_extractor), so it is not
comparable with Inception-v3 FIDs in papers. Not measured here (no MNIST offline).
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
  c.data.name = "mnist"
  c.data.image_size = 32
  c.data.channels = 1
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.fid_samples = 10_000
  c.train.steps = 9_375            # 20 epochs at batch 128
  c.train.batch_size = 128
  c.train.log_every = 50
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "constant"
  c.eval.every = 1000
  c.eval.batch_size = 1000
  c.checkpoint.every = 1000
  return c
