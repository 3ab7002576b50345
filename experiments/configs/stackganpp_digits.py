"""StackGAN++ (Zhang et al. 2018) on scikit-learn's digits: a two-branch tree (16x16 and 32x32), label embeddings.

    python -m experiments.run --exp=stackganpp_digits --workdir=workdirs/stackganpp_digits

The condition is one fixed random 64-d vector per class (`stackgan.embedding='label'`, standing in for the
char-CNN-RNN text embeddings), fed through Conditioning Augmentation; trunk to 16x16, one branch to 32x32, one
discriminator per scale with conditional and unconditional logits (`stackgan.uncond_coeff` 1, the authors'
birds setting), matching-aware (real images with another class's embedding count as fake), colour consistency
between the two scales at weight 1 (grey images: mean and variance of the pixels). A small tree (285k
parameters): gf_dim 16 (trunk 64 -> 16 channels, branch 16 -> 8), df_dim 16, condition 16-d, one residual block.

Expected (measured here; no published number for this data set): eval/cond_accuracy (the project's digits
classifier, on the 32x32 samples, assigns the class of the embedding; chance 0.1) 0.80 at step 500, 0.90 at
1,000, 0.985 at 1,500, 0.993 at 2,000; eval/inception_score (same classifier) 8.9 -> 9.9; eval/fid (its
features at 32x32, named in eval/fid_extractor) 179 -> 180 -> 228 -> 295 (real train vs
test digits, 360 each, with that extractor: 23.6): the digits are right and vary with z,
the background is greyer and noisier than the data's. 7 CPU-minutes, 10.4 minutes of wall time on 2 cores
shared with other jobs (load ~11). At gf_dim = df_dim = 8 (106k parameters): cond_accuracy 0.82 at 2,000 steps,
FID ~800, samples barely varying with z.
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
  c.model.gf_dim = 16
  c.model.df_dim = 16
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
