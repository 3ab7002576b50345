"""LeNet-5 (LeCun et al. 1998) on scikit-learn's digits, upsampled to 32x32: the offline default run.

    python -m experiments.run --exp=lenet_digits

Expected: eval/accuracy 0.983 on the 360 held-out digits after 600 steps with the default seed 0 (measured on
2 CPU cores; seeds 1-3 gave 0.967-0.972: the test split is small, one image is 0.28%). About 40 s on an idle
2-core machine, mostly compilation.
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
  c.optim.weight_decay = 0.05       # L2 on kernels: 1,437 training images overfit LeNet-5 without it
  c.train.label_smoothing = 0.1
  c.eval.every = 100
  c.checkpoint.every = 200
  return c
