"""LeNet-5 (LeCun et al. 1998) on scikit-learn's digits, upsampled to 32x32: the offline default run.

    python -m experiments.run --exp=lenet_digits

Expected: eval/accuracy ~0.98 on the 360 held-out digits after 600 steps, well under a minute on 2 CPU cores.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "lenet5"
  c.data.name = "digits"
  c.data.image_size = 32
  c.data.normalize = "standard"
  c.train.steps = 600
  c.train.batch_size = 64
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 20
  c.eval.every = 100
  c.checkpoint.every = 200
  return c
