"""DenseNet-BC-100 (k=12; Huang et al. 2017; 0.8M params) on CIFAR-10: the paper's recipe.

    python -m experiments.run --exp=densenet_bc_cifar --workdir=runs/densenet_bc_cifar

SGD Nesterov momentum 0.9, lr 0.1, weight decay 1e-4, batch 64, 300 epochs (234,375 steps) with lr /10 at 50% and
75% of training, random crop (pad 4) + flip. Target: 95.5% test accuracy (4.51% error on C10+, Huang et al. 2017,
Table 2). Not measured here: no GPU and no CIFAR-10 download.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "densenet_bc_100_12"
  c.data.name = "cifar10"
  c.data.augment = "crop,flip"
  c.data.download = True
  c.train.steps = 234_375
  c.train.batch_size = 64
  c.train.log_every = 100
  c.optim.name = "nesterov"
  c.optim.lr = 0.1
  c.optim.schedule = "step"
  c.optim.weight_decay = 1e-4
  c.eval.every = 7812
  c.checkpoint.every = 7812
  return c
