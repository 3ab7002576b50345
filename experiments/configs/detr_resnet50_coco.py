"""DETR-ResNet50 on COCO 2017 from your own files, the official facebookresearch/detr recipe: a GPU recipe.

    python -m jaxcnn.data.prepare coco2017_det
    python -m experiments.run --exp=detr_resnet50_coco --config.finetune.weights=resnet50-0676ba61.pth

Source: facebookresearch/detr (README, "DETR R50": 500 epochs, 42.0 box AP on val2017; main.py defaults):
AdamW with lr 1e-4 for the transformer and heads and 1e-5 for the backbone, weight decay 1e-4, batch 64
(16 GPUs x 4 images), 500 epochs with the rate divided by 10 after epoch 400, gradients clipped at norm 0.1,
aux loss on every decoder layer, dropout 0.1, 100 queries, the ImageNet ResNet-50 (converter `resnet50`
into `backbone`) with FrozenBatchNorm2d (`model.frozen_bn`, the default) and conv1/layer1 not trained
(`backbone_freeze_pattern(3)`). Target: box AP 42.0 on val2017 (the official 500-epoch figure).
The backbone's 1e-5 is `optim.lr_multipliers` 0.1 on 'backbone/'. Differences: the official multi-scale
augmentation (shorter side drawn from 480..800 and a random 384..600 crop with probability 1/2) is not
reproduced: images are fitted with the shorter side 800 and the longer at most 1333 and flipped, as the
torchvision recipes; batches are padded to 1333 x 1333 and the model gets the padding mask and each image's
unpadded size, as the official NestedTensor (so no size-changing augmentation); the head has 82 logits (the unused label 0, 80 classes and
"no object"; the official COCO model has 92, one per category id up to 90). The schedule counts 500 x 1,849
steps of 64 over all 118,287 train2017 images (the official data set keeps the images without
annotations). Not measured here (no GPU, no COCO files).
"""
from experiments.configs.common import detection_config
from jaxcnn.models.retinanet import backbone_freeze_pattern

TRAIN_IMAGES = 118_287  # every train2017 image, as the official CocoDetection reads them


def get_config():
  c = detection_config()
  c.model.name = "detr_resnet50"
  c.model.frozen_bn = True
  c.data.name = "coco2017_det"
  c.data.image_size = 1333
  c.data.resize_shorter = 800
  c.data.augment = "flip"
  c.data.num_threads = 8
  c.train.batch_size = 64
  epochs = 500
  c.train.steps = epochs * -(-TRAIN_IMAGES // c.train.batch_size)
  c.train.log_every = 20
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.lr_multipliers = (("^backbone/", 0.1),)  # official lr_backbone 1e-5
  c.optim.weight_decay = 1e-4
  c.optim.decay_all = True  # torch's AdamW decays every parameter
  c.optim.schedule = "step"
  c.optim.step_at = (400 / epochs,)
  c.optim.step_factor = 0.1
  c.optim.warmup_steps = 0
  c.optim.grad_clip_norm = 0.1
  c.finetune.converter_name = "resnet50"
  c.finetune.into = "backbone"
  c.finetune.freeze = backbone_freeze_pattern(trainable_layers=3, frozen_bn=True)
  c.eval.every = 20_000
  c.eval.batch_size = 16
  c.checkpoint.every = 5_000
  return c
