"""torchvision's DeepLabV3-ResNet50 recipe on PASCAL VOC 2012 (+ SBD) from your own files: a GPU recipe.

    python -m experiments.run --exp=deeplabv3_resnet50_voc --config.data.data_dir=/path/to/VOCdevkit/.. \
        --config.finetune.weights=resnet50-0676ba61.pth

torchvision's segmentation reference (references/segmentation/train.py): ImageNet ResNet-50 backbone
(`finetune.into=backbone`, converter `resnet50`), output stride 8, auxiliary FCN head (weight 0.5), SGD
momentum 0.9, lr 0.02 at batch 16 (the auxiliary head at 10x: `optim.lr_multipliers`), weight decay 1e-4, poly
schedule (power 0.9), 30 epochs of `train_aug` (10,582 images), random scale 0.5-2.0, 480x480 crop with
ignore padding, flip. Target: 77.2 mIoU on VOC 2012 val is the DeepLabV3 paper's figure for ResNet-101 at
output stride 16 (Chen et al. 2017, Table 4; 79.8 with its multi-grid / multi-scale / COCO tricks). torchvision's
published 66.4 mIoU for deeplabv3_resnet50 is on a COCO subset with VOC's 20 categories, not VOC val: not comparable.
Not measured here (no GPU, no VOC files).
"""
from experiments.configs.common import segmentation_config


def get_config(model_name="deeplabv3_resnet50", backbone="resnet50"):
  c = segmentation_config()
  c.model.name = model_name
  c.model.aux_loss = True
  c.data.name = "voc2012_seg"
  c.data.train_split = "train_aug"
  c.data.eval_split = "val"
  c.data.image_size = 480
  c.data.augment = "scale,crop,flip"
  c.data.scale_range = (0.5, 2.0)
  c.data.num_threads = 8
  c.train.batch_size = 16
  c.train.steps = 30 * 10582 // 16   # 30 epochs
  c.optim.name = "sgd"
  c.optim.lr = 0.02
  c.optim.lr_multipliers = (("^aux_classifier/", 10.0),)  # torchvision's reference: the aux head at lr * 10
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "poly"
  c.finetune.converter_name = backbone
  c.finetune.into = "backbone"
  c.eval.every = 2000
  c.eval.batch_size = 16
  c.checkpoint.every = 2000
  return c
