"""Faster R-CNN-ResNet50-FPN on PASCAL VOC 07+12 trainval, tested on VOC 2007 test: a GPU recipe.

    python -m jaxcnn.data.prepare voc0712_det
    python -m experiments.run --exp=fasterrcnn_resnet50_voc --config.finetune.weights=resnet50-0676ba61.pth

Source: mmdetection's configs/pascal_voc/faster_rcnn_r50_fpn_1x_voc0712.py (the same ResNet-50-FPN Faster
R-CNN as torchvision's `fasterrcnn_resnet50_fpn`): SGD momentum 0.9, lr 0.01 at batch 16 (8 GPUs x 2),
weight decay 1e-4, 12 epochs of VOC 07+12 trainval (16,551 images; mmdetection's 4 epochs of a 3x
repeated dataset) with lr x0.1 after epoch 9, a linear warmup over the first 500 steps, horizontal flips,
images resized to fit 1000 x 600 keeping the aspect ratio (shorter side 600, longer at most 1000). The
ImageNet ResNet-50 goes into `backbone` (converter `resnet50`) with frozen BatchNorms and conv1/layer1
fixed (`backbone_freeze_pattern(3)`, torchvision's pretrained-backbone setting).
Target: 79.5 mAP on VOC 2007 test (11-point VOC07 AP at IoU 0.5: eval/voc07_map50), mmdetection's
published figure for that config. For comparison, the Faster R-CNN paper (Ren et al. 2015, Table 3)
reports 73.2 mAP for VGG-16 trained on 07+12 (no FPN, single 600 px scale, 4-step alternating training
of RPN and Fast R-CNN); the ResNet-50-FPN model here is the torchvision design, not the paper's.
Differences from mmdetection: torchvision's heads (smooth L1 box losses with beta 1/9 where mmdetection's
config uses L1 in the RPN and the RoI head, torchvision's RPN pre/post-NMS top-n), BatchNorm affines frozen (mmdetection
trains them with frozen statistics), batches padded to 1000 x 1000 instead of grouping by aspect ratio,
images without non-difficult objects kept, the warmup starts at 0 instead of 0.001 x lr. Not measured
here (no GPU, no VOC files).
"""
from experiments.configs.common import detection_config
from jaxcnn.models.retinanet import backbone_freeze_pattern

TRAINVAL_IMAGES = 16551


def get_config():
  c = detection_config()
  c.model.name = "fasterrcnn_resnet50_fpn"
  c.model.frozen_bn = True
  c.data.name = "voc0712_det"
  c.data.image_size = 1000
  c.data.resize_shorter = 600
  c.data.augment = "flip"
  c.data.num_threads = 8
  c.train.batch_size = 16
  steps_per_epoch = -(-TRAINVAL_IMAGES // c.train.batch_size)
  c.train.steps = 12 * steps_per_epoch
  c.train.log_every = 20
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.decay_all = True  # torch's SGD decays every parameter
  c.optim.schedule = "step"
  c.optim.step_at = (9 / 12,)
  c.optim.step_factor = 0.1
  c.optim.warmup_steps = 500
  c.finetune.converter_name = "resnet50"
  c.finetune.into = "backbone"
  c.finetune.freeze = backbone_freeze_pattern(trainable_layers=3, frozen_bn=True)
  c.eval.every = 2 * steps_per_epoch
  c.eval.batch_size = 16
  c.checkpoint.every = steps_per_epoch
  return c
