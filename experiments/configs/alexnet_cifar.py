"""The common CIFAR AlexNet (alexnet_cifar: 11x11/4 conv1 padded by 5, 2x2 pools, one linear layer; 2,472,266 params).

    python -m experiments.run --exp=alexnet_cifar --workdir=runs/alexnet_cifar

Model and recipe of bearpaw/pytorch-classification (`models/cifar/alexnet.py`, TRAINING.md, `cifar.py` defaults):
SGD momentum 0.9, lr 0.1, weight decay 5e-4 on every parameter, batch 128, 164 epochs (64,124 steps) with lr /10 at
epochs 81 and 122, random crop (pad 4) + flip. Target: 77.2% test accuracy (22.78% top-1 error on CIFAR-10 in that
repository's README; a README number, no paper reports AlexNet on CIFAR-10 in this form). Not measured here: no GPU
and no CIFAR-10 download.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "alexnet_cifar"
  c.data.name = "cifar10"
  c.data.augment = "crop,flip"
  c.data.download = True
  c.train.steps = 64_124
  c.train.batch_size = 128
  c.train.log_every = 100
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.schedule = "step"
  c.optim.step_at = (81 / 164, 122 / 164)
  c.optim.weight_decay = 5e-4
  c.optim.decay_all = True
  c.eval.every = 3910
  c.checkpoint.every = 3910
  return c
