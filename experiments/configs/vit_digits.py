"""A small ViT (patch 4, width 96, depth 4, 3 heads) on digits upsampled to 16x16.

    python -m experiments.run --exp=vit_digits

Expected: eval/accuracy 0.972 on the 360 held-out digits after 600 steps (measured: 243 s on 2 CPU cores shared
with other jobs; about a minute idle).
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.width = 96
  c.model.depth = 4
  c.model.num_heads = 3
  c.model.mlp_dim = 192
  c.data.name = "digits"
  c.data.image_size = 16
  c.train.steps = 600
  c.train.batch_size = 64
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 50
  c.optim.grad_clip_norm = 1.0
  c.eval.every = 200
  c.checkpoint.every = 200
  return c
