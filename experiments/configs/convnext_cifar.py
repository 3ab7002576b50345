"""A small ConvNeXt for CIFAR-10 (convnext_cifar: 1x1 stem, depths 2-2-2-2, dims 64-512; 6,378,378 params).

    python -m experiments.run --exp=convnext_cifar --workdir=runs/convnext_cifar

Model and recipe of filipbasara0/simple-convnext (README and `train.py`; there is no paper number for ConvNeXt on
CIFAR-10 from scratch): AdamW lr 1e-3, weight decay 0.1 on every parameter, batch 256, 100 epochs (19,600 steps),
one-cycle schedule (here: 30% linear warmup, then cosine to 0), RandAugment (2 ops, magnitude 9, always applied as
torchvision's), random erasing 0.25 (up to 1/4 of the image, per-pixel noise), Mixup 0.8 / CutMix 1.0 on 40% of the
batches, label smoothing 0.1, no stochastic depth. Target: 92% test accuracy (the README's classification report,
accuracy 0.92). Deviations: the README fed 32x32 images centred on a 64x64 zero canvas (`CenterCrop(64)`), this runs
them at 32x32; timm's Mixup there draws one ratio per image, here one per batch. Not measured here: no GPU and no
CIFAR-10 download.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "convnext_cifar"
  c.data.name = "cifar10"
  c.data.augment = "randaugment,erase"
  c.data.randaugment_n = 2
  c.data.randaugment_m = 9.0
  c.data.randaugment_prob = 1.0
  c.data.erase_prob = 0.25
  c.data.erase_area = (0.02, 0.25)
  c.data.erase_mode = "pixel"
  c.data.download = True
  c.train.steps = 19_600
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.label_smoothing = 0.1
  c.train.mixup_alpha = 0.8
  c.train.cutmix_alpha = 1.0
  c.train.cutmix_prob = 0.5
  c.train.mix_prob = 0.4
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.1
  c.optim.decay_all = True
  c.optim.warmup_steps = 5880
  c.eval.every = 1960
  c.checkpoint.every = 1960
  return c
