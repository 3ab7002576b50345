"""DCGAN (Radford et al. 2016) on scikit-learn's digits at 16x16: a small unconditional DCGAN that trains on a CPU.

    python -m experiments.run --exp=dcgan_digits

Generator 4x4 -> 8x8 -> 16x16 (transposed 4x4/2 convolutions, BN, ReLU, tanh),
discriminator 16x16 -> 8x8 -> 4x4 -> logit (4x4/2 convolutions, BN, LeakyReLU),
the DCGAN init and Adam(2e-4, b1=0.5) as the paper.

Expected (measured here; no published number for this data set): eval/fid
(features of the project's digits classifier, named in eval/fid_extractor)
falls from ~39 at step 250 to 22-29 at steps 1,750-2,000 (two real digit
samples give ~3: an unconditional GAN on 1,437 training images covers the
classes unevenly, eval/inception_score ~7.4 of 10); 1 CPU-minute, 1.5 minutes
of wall time on 2 shared cores.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults


def get_config():
  c = base_config()
  c.task = "gan"
  c.model.name = "dcgan"
  c.model.latent_dim = 64
  c.model.g_width = 32
  c.model.d_width = 32
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.normalize = "symmetric"   # the generator's tanh range
  c.gan = gan_defaults()
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.log_every = 10
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "constant"
  c.eval.every = 250
  c.eval.batch_size = 360
  c.checkpoint.every = 500
  return c
