"""DeepLabV3 with a DenseNet-121 backbone (output stride 16, ASPP 6/12/18 with BN and image pooling, 1x1
classifier) on PASCAL VOC 2012 (+ SBD): the seed document's model, as a GPU recipe.

    python -m experiments.run --exp=deeplabv3_densenet121_voc --config.data.data_dir=/path/to/VOCdevkit/.. \
        --config.finetune.weights=densenet121-a639ec97.pth

ImageNet DenseNet-121 backbone (`finetune.into=backbone`, converter `densenet121`; transition pooling removed
and the last dense block dilated for output stride 16), the DeepLabV3 paper's training recipe (SGD momentum 0.9,
lr 0.007, poly 0.9, weight decay 1e-4, batch 16, 513 crops from random scale 0.5-2.0 and flip, 30k iterations on
train_aug). Target: no published VOC figure exists for this backbone; the DeepLabV3 paper's 77.2 mIoU (VOC 2012
val, ResNet-101, output stride 16; Chen et al. 2017, Table 4) is the reference point. For a binary problem (the
seed's setting) use `--config.model.num_classes=1 --config.segmentation.binary=True
--config.segmentation.loss=bce_dice` on a two-class dataset. Not measured here (no GPU, no VOC files).
"""
from experiments.configs.common import segmentation_config


def get_config():
  c = segmentation_config()
  c.model.name = "deeplabv3_densenet121"
  c.model.output_stride = 16
  c.data.name = "voc2012_seg"
  c.data.train_split = "train_aug"
  c.data.eval_split = "val"
  c.data.image_size = 513
  c.data.augment = "scale,crop,flip"
  c.data.scale_range = (0.5, 2.0)
  c.data.num_threads = 8
  c.train.batch_size = 16
  c.train.steps = 30000
  c.optim.name = "sgd"
  c.optim.lr = 0.007
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "poly"
  c.finetune.converter_name = "densenet121"
  c.finetune.into = "backbone"
  c.eval.every = 2000
  c.eval.batch_size = 16
  c.checkpoint.every = 2000
  return c
