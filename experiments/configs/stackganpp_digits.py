"""StackGAN++ (Zhang et al. 2018) on scikit-learn's digits: a two-branch tree (16x16 and 32x32), label embeddings.

    python -m experiments.run --exp=stackganpp_digits --workdir=workdirs/stackganpp_digits

The condition is one fixed random 64-d vector per class (`stackgan.embedding='label'`, standing in for the
char-CNN-RNN text embeddings), fed through Conditioning Augmentation; trunk to 16x16, one branch to 32x32, one
discriminator per scale with conditional and unconditional logits (`stackgan.uncond_coeff` 1, the authors'
birds setting), matching-aware (real images with another class's embedding count as fake), colour consistency
between the two scales at weight 1 (grey images: mean and variance of the pixels). A small tree: gf_dim 8
(trunk 32 -> 8 channels, branch 8 -> 4), df_dim 8, condition 16-d, one residual block.

Expected (measured here; no published number for this data set): eval/cond_accuracy (the project's digits
classifier, on the 32x32 samples, assigns the class of the embedding; chance 0.1) 0.48 at step 500, 0.69 at
1,000, 0.77 at 1,500, 0.82 at 2,000; eval/inception_score (same classifier) 5.6 -> 8.4; eval/fid (its
features at 32x32, named in eval/fid_extractor) 550-800, high: the samples have a grey background and vary
little with z within a class. 3.2 CPU-minutes, 6.5 minutes of wall time on 2 busy cores.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.gan import gan_defaults, stackgan_defaults
from jaxcnn.tasks.stackgan_v2 import stackganpp_defaults


def get_config():
  c = base_config()
  c.task = "stackganpp"
  c.model.name = "stackganpp"
  c.model.latent_dim = 32
  c.model.c_dim = 16
  c.model.gf_dim = 8
  c.model.df_dim = 8
  c.model.r_num = 1
  c.model.base_size = 16
  c.model.num_branches = 2
  c.data.name = "digits"
  c.data.image_size = 32           # the largest scale; the 16x16 reals are resized from it
  c.data.normalize = "symmetric"   # the generator's tanh range
  c.gan = gan_defaults()
  c.stackgan = stackgan_defaults()
  c.stackgan.embedding = "label"
  c.stackgan.embed_dim = 64
  c.stackgan.uncond_coeff = 1.0
  c.stackganpp = stackganpp_defaults()
  c.stackganpp.color_coeff = 1.0
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
