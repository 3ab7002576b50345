"""Wide ResNet-28-10 (Zagoruyko & Komodakis 2016; 36.5M params) on CIFAR-10: the paper's recipe.

    python -m experiments.run --exp=wrn28_10_cifar --workdir=runs/wrn28_10_cifar

SGD Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, 200 epochs (78,200 steps) with lr x0.2 at epochs
60, 120 and 160, dropout 0.3 in the blocks, random crop (pad 4) + flip. Target: 96.1% test accuracy (3.89% error
with dropout, Zagoruyko & Komodakis 2016, Table 4). Not measured here: no GPU and no CIFAR-10 download.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.model.name = "wrn28_10"
  c.model.dropout_rate = 0.3
  c.data.name = "cifar10"
  c.data.augment = "crop,flip"
  c.data.download = True
  c.train.steps = 78_200
  c.train.batch_size = 128
  c.train.log_every = 100
  c.optim.name = "nesterov"
  c.optim.lr = 0.1
  c.optim.schedule = "step"
  c.optim.step_at = (0.3, 0.6, 0.8)
  c.optim.step_factor = 0.2
  c.optim.weight_decay = 5e-4
  c.eval.every = 3910
  c.checkpoint.every = 3910
  return c
