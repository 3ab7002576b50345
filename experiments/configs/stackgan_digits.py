"""StackGAN Stage I (Zhang et al. 2017) on scikit-learn's digits at 16x16, conditioned on class-label embeddings.

    python -m experiments.run --exp=stackgan_digits --workdir=workdirs/stackgan_digits
    python -m experiments.run --exp=stackgan_digits_stage2 --config.stackgan.stage1_workdir=workdirs/stackgan_digits

The condition is one fixed random 64-d vector per class (`stackgan.embedding='label'`,
standing in for the char-CNN-RNN text embeddings of the paper), fed through
Conditioning Augmentation; the discriminator is matching-aware (real images
with another class's embedding count as fake). A small Stage I: widths gf_dim
16, df_dim 16, condition 16-d, 16x16 grey images; Stage II
(`stackgan_digits_stage2`) refines its output to 32x32.

Expected (measured here; no published number for this data set): after 2,000
steps eval/cond_accuracy (the project's digits classifier assigns the sample
to the class of its embedding) 0.96, up from 0.74 at step 500; eval/fid (that
classifier's features, named in eval/fid_extractor) 25-30 throughout (the
samples look right from early on; within a class they vary little). 1.6
CPU-minutes, 3.5 minutes of wall time on 2 busy cores.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults, stackgan_defaults


def get_config():
  c = base_config()
  c.task = "stackgan"
  c.model.name = "stackgan_stage1"
  c.model.latent_dim = 32
  c.model.c_dim = 16
  c.model.gf_dim = 16
  c.model.df_dim = 16
  c.model.ef_dim = 16
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.normalize = "symmetric"   # the generator's tanh range
  c.gan = gan_defaults()
  c.stackgan = stackgan_defaults()
  c.stackgan.embedding = "label"
  c.stackgan.embed_dim = 64
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.log_every = 10
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "constant"
  c.eval.every = 500
  c.eval.batch_size = 360
  c.checkpoint.every = 500
  return c
