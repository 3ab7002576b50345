"""Conditional GAN (Mirza & Osindero 2014, MLP generator and discriminator) on scikit-learn's digits at 16x16.

    python -m experiments.run --exp=cgan_digits

Expected (measured here; no published number for this data set): samples
asked for class k are classified as k by the project's digits classifier
(eval/cond_accuracy) 0.99 after 3,000 steps (0.12 at step 500, 0.98 from step
1,500 on); eval/fid (features of that classifier, named in
eval/fid_extractor) falls from ~130 at step 500 to 8-12 (two real digit
samples give ~3). ~1 CPU-minute, 1-3 minutes of wall time on 2 cores, plus
~20 s to train the feature extractor the first time (cached in
~/.cache/jaxcnn). plots/ holds a 10x10 sample grid per eval, one class per row.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults


def get_config():
  c = base_config()
  c.task = "gan"
  c.model.name = "gan"
  c.model.latent_dim = 64
  c.model.g_hidden = (256, 512)
  c.model.d_hidden = (512, 256)
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.normalize = "symmetric"   # the generator's tanh range
  c.gan = gan_defaults()
  c.gan.conditional = True
  c.train.steps = 3000
  c.train.batch_size = 64
  c.train.log_every = 10
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "constant"
  c.eval.every = 500
  c.eval.batch_size = 360
  c.checkpoint.every = 1000
  return c
