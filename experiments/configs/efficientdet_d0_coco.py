"""EfficientDet-D0 on COCO 2017 from your own files, the official google/automl recipe: a GPU/TPU recipe.

    python -m jaxcnn.data.prepare coco2017_det
    python -m experiments.run --exp=efficientdet_d0_coco \\
        --config.finetune.weights=efficientnet_b0_rwightman-7f5810bc.pth

Source: google/automl efficientdet (README "EfficientDet-D0": AP 34.3 on val2017, 34.6 on test-dev2017, 3.9M
parameters; hparams_config.py and main.py defaults): 512 x 512 images, SGD momentum 0.9, lr 0.08 at batch 64
with a linear warmup from 0.008 over the first epoch and cosine decay over 300 epochs of 120,000 images,
L2 weight decay 4e-5 on the convolution kernels, gradients clipped at norm 10, an EMA of the
weights (0.9998) for evaluation, horizontal flips and scale jitter 0.1-2.0 with a random crop, an ImageNet
EfficientNet-B0 backbone (official: its TF checkpoint; here torchvision's, converter `efficientnet_b0`, into
`backbone`), focal loss alpha 0.25 gamma 1.5, Huber box loss delta 0.1 x 50 (the model's defaults).
Target: box AP 34.3 on val2017 (the official figure above). Differences: the official scale jitter sets the
longer side to 512 x U(0.1, 2.0), here the shorter side (`data.scale_base`); the warmup starts at 0 instead
of 0.008; the torchvision backbone was trained with symmetric padding, so `model.tf_padding=False` (effdet's
PyTorch-native `efficientdet_d0` does the same); the official evaluation uses soft-NMS, here hard NMS 0.5;
the head has 80 outputs (COCO's 80 classes; the official head keeps 90 for COCO's ids).
Not measured here (no accelerator, no COCO files).
"""
from experiments.configs.common import detection_config
from jaxcnn.models.efficientdet import COMPOUND_SCALING

EXAMPLES_PER_EPOCH = 120_000  # the official main.py's num_examples_per_epoch


def get_config(variant=0, epochs=300, batch_size=64):
  c = detection_config()
  c.model.name = f"efficientdet_d{variant}"
  c.model.tf_padding = False
  size = COMPOUND_SCALING[variant][1]
  c.data.name = "coco2017_det"
  c.data.image_size = size
  c.data.augment = "scale,crop,flip"
  c.data.scale_range = (0.1, 2.0)
  c.data.scale_base = size
  c.data.num_threads = 8
  steps_per_epoch = EXAMPLES_PER_EPOCH // batch_size
  c.train.batch_size = batch_size
  c.train.steps = epochs * steps_per_epoch
  c.train.log_every = 50
  c.train.ema_decay = 0.9998
  c.optim.name = "sgd"
  c.optim.lr = 0.08 * batch_size / 64
  c.optim.momentum = 0.9
  # The official L2 term 4e-5 * sum(w^2) / 2 over the kernels (regex '(kernel|weight):0$': no biases, BN or
  # fusion weights) has the gradient 4e-5 w: coupled SGD decay on the kernels (decay_mask). It is clipped
  # with the loss's gradient there, after clipping here.
  c.optim.weight_decay = 4e-5
  c.optim.decay_all = False
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = steps_per_epoch
  c.optim.grad_clip_norm = 10.0
  c.finetune.converter_name = COMPOUND_SCALING[variant][0]
  c.finetune.into = "backbone"
  c.eval.every = 5 * steps_per_epoch
  c.eval.batch_size = 64
  c.checkpoint.every = 5 * steps_per_epoch
  return c
