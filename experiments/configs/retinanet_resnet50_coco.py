"""torchvision's RetinaNet-ResNet50-FPN recipe on COCO 2017 from your own files: a GPU recipe.

    python -m jaxcnn.data.prepare coco2017_det
    python -m experiments.run --exp=retinanet_resnet50_coco --config.finetune.weights=resnet50-0676ba61.pth

Source: torchvision's references/detection README ("RetinaNet": `train.py --dataset coco --model
retinanet_resnet50_fpn --epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3 --lr 0.01
--weights-backbone ResNet50_Weights.IMAGENET1K_V1` on 8 GPUs x 2 images) and its train.py defaults: SGD
momentum 0.9, weight decay 1e-4 on every parameter, lr 0.01 at batch 16 with a linear warmup over the
first 1,000 steps, x0.1 at epochs 16 and 22 of 26, horizontal flips, images with the shorter side 800 and
the longer at most 1333. The ImageNet ResNet-50 goes into `backbone` (converter `resnet50`); as
torchvision with pretrained backbone weights, its BatchNorms are frozen (`model.frozen_bn`, and their
affine parameters fixed) and only layer2-4 train (`trainable_backbone_layers=3`, written as the
`finetune.freeze` regex by `backbone_freeze_pattern`). Target: box AP 36.4 on val2017 (torchvision's
published figure for these weights). Differences: torchvision groups images of similar aspect ratio
(factor 3) and drops training images without annotations; here batches are padded to 1333 x 1333
(`data.resize='fit'`) and empty images are kept as background, the warmup starts at 0 instead of 0.001 x lr,
and the head has 81 outputs (80 classes + background; torchvision's COCO weights use COCO's 91 ids).
Not measured here (no GPU, no COCO files).
"""
from experiments.configs.common import detection_config
from jaxcnn.models.retinanet import backbone_freeze_pattern

TRAIN_IMAGES = 117_266  # train2017 images with annotations (what torchvision's references train on)


def get_config(model_name="retinanet_resnet50_fpn", epochs=26, lr_epochs=(16, 22), batch_size=16):
  c = detection_config()
  c.model.name = model_name
  c.model.frozen_bn = True
  c.data.name = "coco2017_det"
  c.data.image_size = 1333
  c.data.resize_shorter = 800
  c.data.augment = "flip"
  c.data.num_threads = 8
  c.train.batch_size = batch_size
  c.train.steps = epochs * -(-TRAIN_IMAGES // batch_size)
  c.train.log_every = 20
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.decay_all = True  # torchvision's SGD decays every parameter
  c.optim.schedule = "step"
  c.optim.step_at = tuple(e / epochs for e in lr_epochs)
  c.optim.step_factor = 0.1
  c.optim.warmup_steps = 1000
  c.finetune.converter_name = "resnet50"
  c.finetune.into = "backbone"
  c.finetune.freeze = backbone_freeze_pattern(trainable_layers=3, frozen_bn=True)
  c.eval.every = 10_000
  c.eval.batch_size = 16
  c.checkpoint.every = 5_000
  return c
