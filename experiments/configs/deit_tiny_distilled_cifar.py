"""DeiT-Ti with a distillation token on CIFAR-10, taught by a convolutional teacher (DeiT's hard distillation).

    python -m experiments.run --exp=resnet56_cifar --workdir=runs/resnet56_cifar                  # the teacher
    python -m experiments.run --exp=deit_tiny_distilled_cifar --workdir=runs/deit_tiny_distilled_cifar \\
        --config.distill.teacher=runs/resnet56_cifar

Student: deit_tiny_distilled_patch4_32 (vit_cifar's ViT-Ti/4 plus a distillation token and head), evaluated on
the mean of its two heads. Loss: 0.5 CE(class head, labels) + 0.5 CE(distillation head, argmax teacher) (DeiT,
Touvron et al. 2021, sec. 5.1: hard distillation; a convnet teacher works best, their Table 2), teacher and
student on the same augmented and mixed batch. Recipe: vit_cifar's (AdamW lr 1e-3, wd 0.05, batch 512, 200
epochs, RandAugment, erasing, Mixup 0.8 / CutMix 1.0, label smoothing 0.1 on the label term, stochastic
depth 0.1). Target: above vit_cifar trained alone with the same recipe (~90-93%, Lee et al. 2021) and towards
the teacher (resnet56_cifar, 93.0%, He et al. 2015): DeiT-Ti gains 2.6 points on ImageNet with hard
distillation from a RegNetY-16GF (72.2% -> 74.5%, DeiT Table 5). Not measured here: no GPU and no CIFAR-10
download on this machine.
"""
from experiments.configs import vit_cifar
from jaxcnn.tasks.distill import default_config


def get_config():
  c = vit_cifar.get_config()
  c.task = "distill"
  c.model.name = "deit_tiny_distilled_patch4_32"
  c.distill = default_config()
  c.distill.teacher = "runs/resnet56_cifar"
  c.distill.type = "hard"
  c.distill.alpha = 0.5
  return c
