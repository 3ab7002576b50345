"""Conditional GAN (Mirza & Osindero 2014) on MNIST 28x28: MLP generator and discriminator, both given the label.

    python -m experiments.run --exp=cgan_mnist

Needs MNIST prepared for tfds (`python -m jaxcnn.data.prepare mnist`). The
paper's generator maps z (100-d) and the one-hot label through 256 and 1,200
ReLU units (we use LeakyReLU 256-512-1024, the common modern form) and its
discriminator used maxout; it reports only a Parzen-window log-likelihood
(132 +- 1.8). Expected here: eval/cond_accuracy (the project's MNIST
classifier assigns the sample to the class asked for) above 0.95 after 20
epochs, as on the digits run (cgan_digits reaches ~0.99); not measured (no
MNIST offline).
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults


def get_config():
  c = base_config()
  c.task = "gan"
  c.model.name = "gan"
  c.model.latent_dim = 100
  c.model.g_hidden = (256, 512, 1024)
  c.model.d_hidden = (512, 256)
  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.conditional = True
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
