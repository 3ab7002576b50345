"""VGG-16 with BatchNorm, CIFAR head (vgg16_bn_cifar: 512 -> 10 linear; 14,728,266 params) on CIFAR-10.

    python -m experiments.run --exp=vgg16_bn_cifar --workdir=runs/vgg16_bn_cifar

Model and recipe of kuangliu/pytorch-cifar (`models/vgg.py`, `main.py`): SGD momentum 0.9, lr 0.1, weight decay 5e-4
on every parameter (torch's SGD), batch 128, 200 epochs (78,200 steps) with cosine decay, random crop (pad 4) + flip.
Target: 92.64% test accuracy, the VGG16 row of that repository's README (a README number, not a paper's; the README
does not say which of the repo's schedules produced it). Not measured here: no GPU and no CIFAR-10 download.
"""
from experiments.configs.common import cifar10_sgd_config


def get_config():
  return cifar10_sgd_config("vgg16_bn_cifar")
