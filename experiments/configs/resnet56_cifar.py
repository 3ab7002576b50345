"""CIFAR ResNet-56 (He et al. 2015, sec. 4.2; option A shortcuts, 0.85M params) on CIFAR-10: the paper's recipe.

    python -m experiments.run --exp=resnet56_cifar --workdir=runs/resnet56_cifar

SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, 64k iterations with lr /10 at 32k and 48k, random crop
(pad 4) + flip. Target: 93.0% test accuracy (6.97% error, He et al. 2015, Table 6). Not measured here: no GPU and
no CIFAR-10 download on this machine.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet56"
  c.data.name = "cifar10"
  c.data.augment = "crop,flip"
  c.data.download = True
  c.train.steps = 64_000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.schedule = "step"
  c.optim.step_at = (0.5, 0.75)
  c.optim.weight_decay = 1e-4
  c.eval.every = 4000
  c.checkpoint.every = 4000
  return c
