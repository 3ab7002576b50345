"""CBAM-ResNet-56 (Woo et al. 2018: channel then spatial attention on every block's residual branch) on CIFAR-10.

    python -m experiments.run --exp=cbam_resnet_cifar --workdir=runs/cbam_resnet_cifar

CIFAR ResNet-56 (option A shortcuts) with attn='cbam'; He et al.'s recipe: SGD momentum 0.9, lr 0.1, weight decay
1e-4, batch 128, 64k steps with lr x0.1 at 50% and 75%, random crop (pad 4) + flip. Target: ~94% test accuracy
(ResNet-56 reaches 93.0% in He et al. 2015; CBAM reports gains of ~0.5-1 point on CIFAR ResNets). Not measured here:
this machine has no GPU and no CIFAR-10 download.
"""
from experiments.configs import se_resnet_cifar


def get_config():
  c = se_resnet_cifar.get_config()  # the same recipe; only the attention block differs
  c.model.attn = "cbam"
  return c
