"""The common CIFAR ResNet-18 (3x3 stem, no max-pool; 11,173,962 params) on CIFAR-10 from tfds: a GPU recipe.

    python -m experiments.run --exp=resnet18_cifar --workdir=runs/resnet18_cifar

Recipe: SGD Nesterov momentum 0.9, lr 0.1 x (batch/128), weight decay 5e-4 (not on BN/biases), batch 128,
200 epochs (78,200 steps) with cosine decay, random crop (pad 4) + flip. Target: ~95% test accuracy (the widely
reproduced result of this recipe, e.g. kuangliu/pytorch-cifar reports 95.4% for ResNet18). Not measured here:
this machine has no GPU and no CIFAR-10 download.
"""
from experiments.configs.common import cifar10_sgd_config


def get_config():
  return cifar10_sgd_config("resnet18_cifar", optimizer="nesterov", decay_all=False)
