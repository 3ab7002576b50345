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

Expected (measured here on a busy machine; no published number for this data
set): from a 2,000-step Stage I, eval/cond_accuracy 0.92-0.96 at every eval
(250 ... 1,000 steps) and eval/fid between ~70 and ~240 from eval to eval
(68.5 at step 1,000; the features of the project's 32x32 digits classifier,
so not comparable with Stage I's 16x16 numbers); 10 minutes of wall time with
3.7 CPU-minutes on 2 shared cores, about 3 minutes on an idle machine. The
32x32 convolutions of Stage II make it the slowest digits run.
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
