"""torchvision's SSD300-VGG16 recipe on PASCAL VOC 07+12 trainval, tested on VOC 2007 test: a GPU recipe.

    python -m jaxcnn.data.prepare voc0712_det
    python -m experiments.run --exp=ssd300_voc --config.finetune.weights=vgg16-397923af.pth

torchvision's detection reference (references/detection, "ssd300_vgg16"): SGD momentum 0.9, lr 0.002 at a
global batch of 32 (8 GPUs x 4), weight decay 5e-4, 120 epochs with the rate divided by 10 after epochs 80
and 110, a linear warm-up over the first 1000 steps, the SSD augmentation (photometric distortion, zoom out
up to 4x, minimum-IoU crop, flip) and 300x300 stretched inputs; here 120 epochs of 07+12 trainval (16,551
images). The VGG-16 trunk starts from ImageNet (`finetune.into=backbone`, converter `vgg16`): torchvision's
IMAGENET1K_V1 file (vgg16-397923af.pth) expects ImageNet mean/std normalisation, which data.normalize
'standard' gives VOC here. (torchvision's own SSD300 starts from the Caffe-ported IMAGENET1K_FEATURES trunk
on 0-255 inputs; that file's classifier is NaN-filled and is refused by the weight loader.)
Target: 77.2 mAP on VOC 2007 test (11-point VOC07 AP at IoU 0.5: eval/voc07_map50), SSD300* of the SSD
paper (Liu et al. 2016, ECCV version, Table 6: trained with the zoom-out "expansion" augmentation used
here; 74.3 without it, Table 1). Not measured here (no GPU, no VOC files).
"""
from experiments.configs.common import detection_config

TRAINVAL_IMAGES = 16551


def get_config():
  c = detection_config()
  c.model.name = "ssd300_vgg16"
  c.data.name = "voc0712_det"
  c.data.image_size = 300
  c.data.resize = "stretch"
  c.data.augment = "photometric,zoom_out,iou_crop,flip"
  c.data.zoom_out_range = (1.0, 4.0)
  c.data.normalize = "standard"
  c.data.num_threads = 8
  c.train.batch_size = 32
  steps_per_epoch = TRAINVAL_IMAGES // c.train.batch_size
  c.train.steps = 120 * steps_per_epoch
  c.train.log_every = 100
  c.optim.name = "sgd"
  c.optim.lr = 0.002
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.step_at = (80 / 120, 110 / 120)
  c.optim.step_factor = 0.1
  c.optim.warmup_steps = 1000
  c.finetune.converter_name = "vgg16"
  c.finetune.into = "backbone"
  c.eval.every = 10 * steps_per_epoch
  c.eval.batch_size = 32
  c.checkpoint.every = 10 * steps_per_epoch
  return c
