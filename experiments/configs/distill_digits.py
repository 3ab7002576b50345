"""Knowledge distillation on digits (16x16): LeNet-5 (modern, 21,386 parameters) taught by a ResNet-20 teacher.

    python -m experiments.run --exp=resnet_digits --workdir=workdirs/resnet_digits        # the teacher first
    python -m experiments.run --exp=distill_digits --config.distill.teacher=workdirs/resnet_digits
    python -m experiments.run --exp=distill_digits --config.distill.teacher=workdirs/resnet_digits \\
        --config.distill.alpha=0 --workdir=workdirs/distill_digits_alone               # the same student alone

Hinton's soft loss (T = 4, alpha = 0.9) with the teacher and student on the same randomly cropped batch; with
alpha = 0 the teacher is loaded but the loss is the label loss alone, so the two runs differ in the teacher's
term only (same data order, augmentation and initialisation). Measured (2 CPU cores under load ~20, teacher
resnet_digits retrained here: eval/accuracy 0.9917): eval/accuracy with the teacher 0.9861 / 0.9694 (seeds 0 / 1)
against 0.9806 / 0.9833 alone: the teacher helps with seed 0 and hurts with seed 1, a difference of a few of
the 360 test images either way; no reliable gain at this budget. alpha = 1 with --config.train.mixup_alpha=0.4
(function matching; the same Mixup alone): 0.9833 / 0.9611 against 0.9750 / 0.9778, the same pattern.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.distill import default_config


def get_config():
  c = base_config()
  c.task = "distill"
  c.distill = default_config()
  c.distill.teacher = "workdirs/resnet_digits"
  c.distill.type = "soft"
  c.distill.temperature = 4.0
  c.distill.alpha = 0.9
  c.model.name = "lenet5_modern"
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.augment = "crop"
  c.data.crop_padding = 2
  c.train.steps = 600
  c.train.batch_size = 64
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 20
  c.eval.every = 100
  c.checkpoint.every = 100
  return c
