"""LeNet-5 as it is run on CIFAR-10 today (lenet5_cifar: ReLU, max-pool, 3-channel 32x32 input; 62,006 params).

    python -m experiments.run --exp=lenet5_cifar --workdir=runs/lenet5_cifar

The model is kuangliu/pytorch-cifar's `models/lenet.py` (the paper's 32x32 geometry with ReLU and max-pooling). No
paper or major repository reports a number for it; the recipe and target come from a blog post that trains 30
CNNs with one recipe on CIFAR-10 ("玩转CIFAR10", https://blog.51cto.com/u_15786578/5667479): SGD momentum 0.9,
lr 0.01, weight decay 5e-4 on every parameter, batch 128, 200 epochs (78,200 steps) with cosine decay, random crop
(pad 4) + flip. Target: 74.7% test accuracy (its LeNet row: 0.7474, 62,006 params, best epoch). Not measured here:
no CIFAR-10 download on this machine.
"""
from experiments.configs.common import cifar10_sgd_config


def get_config():
  return cifar10_sgd_config("lenet5_cifar", lr=0.01)
