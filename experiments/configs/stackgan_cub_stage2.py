"""StackGAN Stage II on CUB birds: refines a trained `stackgan_cub` Stage I from 64x64 to 256x256.

    python -m experiments.run --exp=stackgan_cub_stage2 --workdir=workdirs/stackgan_cub_stage2 \
        --config.data.data_dir=/path/to/birds --config.stackgan.stage1_workdir=workdirs/stackgan_cub

Same data folder as `stackgan_cub` (see its docstring; `data.data_dir` is
required); the bird crops are resized to 256x256. The Stage-I generator is read
from the newest checkpoint of `stackgan.stage1_workdir` (which must be a
stackgan_stage1 run on cub_stackgan with the same embedding settings) and kept
frozen. The authors' Stage-II settings: GF_DIM 128, DF_DIM 64, 4 residual
blocks, the extra unconditional discriminator logit, batch 64. Expected (paper,
Table 1): Inception Score 3.70 +- 0.04 on CUB with Inception-v3 features
fine-tuned on CUB; the project's own classifier replaces it here, so the
numbers are not comparable.
"""
from experiments.configs import stackgan_cub


def get_config():
  c = stackgan_cub.get_config()
  c.model.name = "stackgan_stage2"
  del c.model["latent_dim"]        # z comes from Stage I's configuration
  c.model.r_num = 4
  c.data.image_size = 256
  c.stackgan.uncond_coeff = 1.0
  c.stackgan.stage1_workdir = "workdirs/stackgan_cub"
  c.eval.batch_size = 128          # 256x256 images: 512 of them would be 400 MB per batch
  return c
