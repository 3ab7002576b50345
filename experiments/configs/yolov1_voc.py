"""YOLOv1 (Redmon et al. 2016) with the paper's recipe on PASCAL VOC 07+12 trainval, tested on VOC 2007 test.

    python -m jaxcnn.data.prepare voc0712_det
    python -m experiments.run --exp=yolov1_voc

The paper's section 2.2: 135 epochs on VOC 2007 + 2012 train/val (`voc0712_det` 'trainval', 16,551
images), batch 64, momentum 0.9, weight decay 5e-4, dropout 0.5 after the first FC, learning rate raised
over the first epochs to 1e-2 (here a linear warm-up from 0 over the first 2 of the 75 epochs; the paper
starts it at 1e-3), then 1e-2 for 75 epochs, 1e-3 for 30 and 1e-4 for 30; 448 x 448 inputs (`data.resize='stretch'`, as darknet
resizes) with pixel values in [0, 1] (darknet's input, `data.normalize='unit'`). Target: 63.4 mAP on VOC
2007 test (the paper's Table 1, "YOLO", VOC 2007 + 2012 training), read as eval/voc07_map50 (VOC2007's
11-point AP at IoU 0.5). Not measured here (no GPU, no VOC files).

Not the paper's recipe, and why:
  * No ImageNet pretraining. The paper pretrains the first 20 convolutions (+ average pool + FC) on ImageNet
    at 224 x 224 for about a week (88% top-5) before detection; no such weights exist in a loadable form
    (darknet's `extraction.conv.weights` is darknet's own format and there are no official PyTorch YOLOv1
    weights), and jaxcnn has no registered classifier for that trunk. From scratch, expect well below 63.4.
  * Augmentation: the paper jitters scale and translation by up to 20% of the image and exposure and
    saturation by up to 1.5 in HSV. Here 'zoom_out' with data.zoom_out_range (1.0, 1.2) (the image placed
    on a canvas up to 20% larger, so shifted and shrunk by up to 20%, with probability 1/2; it does not zoom
    in), 'flip' (darknet flips, the paper does not say) and SSD's 'photometric' distortion (brightness,
    contrast, saturation 0.5-1.5, hue, channel order) in place of the HSV jitter.
  * VOC's 'difficult' objects are training targets here (darknet's voc_label.py drops them); the
    evaluator ignores them, as the VOC devkit does.
"""
from experiments.configs.common import detection_config

TRAINVAL_IMAGES = 16551


def get_config():
  c = detection_config()
  c.model.name = "yolov1"              # S=7, B=2, 20 classes (num_classes 21 from the task), 271.7M params
  c.data.name = "voc0712_det"
  c.data.image_size = 448
  c.data.resize = "stretch"
  c.data.normalize = "unit"
  c.data.augment = "photometric,zoom_out,flip"
  c.data.zoom_out_range = (1.0, 1.2)
  c.data.num_threads = 8
  c.train.batch_size = 64
  steps_per_epoch = TRAINVAL_IMAGES // c.train.batch_size
  c.train.steps = 135 * steps_per_epoch
  c.train.log_every = 100
  c.optim.name = "sgd"
  c.optim.lr = 1e-2
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.warmup_steps = 2 * steps_per_epoch
  # Fractions of the 133 epochs after the warm-up: 1e-2 up to epoch 75, 1e-3 up to 105, 1e-4 to 135.
  c.optim.step_at = (73 / 133, 103 / 133)
  c.optim.step_factor = 0.1
  c.eval.every = 15 * steps_per_epoch
  c.eval.batch_size = 64
  c.checkpoint.every = 5 * steps_per_epoch
  return c
