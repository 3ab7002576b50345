"""StackGAN Stage II on digits: refines a trained `stackgan_digits` Stage I from 16x16 to 32x32.

    python -m experiments.run --exp=stackgan_digits --workdir=workdirs/stackgan_digits
    python -m experiments.run --exp=stackgan_digits_stage2 --config.stackgan.stage1_workdir=workdirs/stackgan_digits

The Stage-I generator is read from the newest checkpoint of
`stackgan.stage1_workdir` and kept frozen; Stage II encodes its 16x16 output to
8x8 (one stride-2 convolution, `model.encoder_downs=1`: with the paper's two
the 4x4 code lost the Stage-I image and every class collapsed to one sample),
joins the (re-augmented) condition, applies 2 residual blocks and upsamples to
32x32. Its discriminator has the authors' extra unconditional logit
(`stackgan.uncond_coeff=1`).

Expected (measured here; no published number for this data set): after 1,500
steps eval/cond_accuracy ~0.9 and eval/fid ~20-40 (32x32 features of the
project's digits classifier, so not comparable with Stage I's 16x16 numbers);
about 3 minutes on 2 idle CPU cores.
"""
from experiments.configs import stackgan_digits


def get_config():
  c = stackgan_digits.get_config()
  c.model.name = "stackgan_stage2"
  del c.model["latent_dim"]        # z comes from Stage I's configuration
  c.model.r_num = 2
  c.model.encoder_downs = 1
  c.data.image_size = 32
  c.stackgan.uncond_coeff = 1.0
  c.stackgan.stage1_workdir = "workdirs/stackgan_digits"
  c.train.steps = 1000
  c.eval.every = 250
  return c
