"""A CIFAR-style ResNet-20 (He et al. 2015, BasicBlocks, 16/32/64 channels) on digits upsampled to 16x16.

    python -m experiments.run --exp=resnet_digits

Expected: eval/accuracy 0.997 on the 360 held-out digits after 300 steps (measured: 169 s on 2 CPU cores shared
with other jobs).
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet20"
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.augment = "crop"
  c.data.crop_padding = 2
  c.train.steps = 300
  c.train.batch_size = 64
  c.optim.name = "nesterov"
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 20
  c.eval.every = 100
  c.checkpoint.every = 100
  return c
