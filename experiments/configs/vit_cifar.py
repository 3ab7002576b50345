"""ViT from scratch on CIFAR-10 (tfds `cifar10`, downloaded and prepared on first use): a GPU recipe.

    python -m experiments.run --exp=vit_cifar --workdir=runs/vit_cifar

Model: vit_tiny_patch4_32 (width 192, depth 12, 3 heads, patch 4, class token; ~5.4M params) with stochastic depth 0.1.
Recipe (DeiT-style, for 8 GPUs or a TPU slice): AdamW (lr 1e-3, wd 0.05, batch 512), 200 epochs (19,500 steps) with 5
warmup epochs and cosine decay, label smoothing 0.1, random crop + flip + RandAugment (m9, n2, mstd 0.5) + random
erasing 0.25, Mixup 0.8 / CutMix 1.0, stochastic depth 0.1. Target: ~90-93% test accuracy (Lee et al. 2021, "Vision
Transformer for Small-Size Datasets": a 6.3M-param ViT reaches 90.9% in 200 epochs with this family of augmentations;
94.5% with their SPT+LSA changes). Not measured here: this machine has no GPU and no CIFAR-10 download.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "vit_tiny_patch4_32"
  c.model.drop_path_rate = 0.1
  c.data.name = "cifar10"
  c.data.augment = "crop,flip,randaugment,erase"
  c.data.randaugment_mstd = 0.5
  c.data.erase_prob = 0.25
  c.data.download = True
  c.train.steps = 19_500
  c.train.batch_size = 512
  c.train.label_smoothing = 0.1
  c.train.mixup_alpha = 0.8
  c.train.cutmix_alpha = 1.0
  c.train.log_every = 50
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 500
  c.optim.grad_clip_norm = 1.0
  c.eval.every = 1000
  c.checkpoint.every = 1000
  return c
