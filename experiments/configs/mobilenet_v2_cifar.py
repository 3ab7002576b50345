"""MobileNetV2 with the CIFAR stem (mobilenet_v2_cifar: stride-1 stem and 24-channel stage; 2,236,682 params) on CIFAR-10.

    python -m experiments.run --exp=mobilenet_v2_cifar --workdir=runs/mobilenet_v2_cifar

Layout and recipe of kuangliu/pytorch-cifar (`models/mobilenetv2.py`, `main.py`): SGD momentum 0.9, lr 0.1, weight
decay 5e-4 on every parameter, batch 128, 200 epochs (78,200 steps) with cosine decay, random crop (pad 4) + flip, no
dropout. Target: 94.43% test accuracy, the MobileNetV2 row of that repository's README (a README number, not a
paper's). The blocks here are torchvision's; kuangliu's add 1x1 projection shortcuts where a stride-1 block changes
width (about 2.3M params in all), so expect the same ballpark rather than the exact number. Not measured here: no GPU
and no CIFAR-10 download.
"""
from experiments.configs.common import cifar10_sgd_config


def get_config():
  return cifar10_sgd_config("mobilenet_v2_cifar")
