"""RetinaNet (torchvision's retinanet_resnet50_fpn design on a ResNet-18) on the offline `digits_det` canvases.

    python -m experiments.run --exp=retinanet_digits

torchvision's RetinaNet (FPN, focal loss with Matcher 0.5/0.4 and low-quality matches, L1 box loss,
score 0.05 / NMS 0.5 post-processing) made small enough for 2 CPU cores, trained from scratch: 64x64
canvases of 2-4 scikit-learn digits of 12-28 px (see jaxcnn/data/canvas.py), 10 classes (+ background).
ResNet-18 backbone (C3-C5 at strides 8/16/32, no P6/P7: the canvas is 64 px), 64-channel FPN, two convs
per head tower instead of four, anchors (12, 16), (24, 32), (48, 64) px x aspect ratios 1 and 2 (digits
are taller than wide; 4 per location), at most 100 detections. AdamW 1e-3 (weight decay 1e-4) with a
30-step warmup and cosine decay over 1,000 steps of 16, gradients clipped at norm 10, no augmentation.
Expected: eval/map50 >= 0.7 on the 500 test canvases (measured 0.84, AP@[.5:.95] 0.67; with 800 steps it
was 0.75, with 450 steps of 32 at lr 2e-3 0.51); the measured figure and time are in the README.
"""
from experiments.configs.common import detection_config


def get_config():
  c = detection_config()
  c.model.name = "retinanet_resnet50_fpn"
  c.model.backbone_name = "resnet18"
  c.model.fpn_channels = 64
  c.model.head_convs = 2
  c.model.returned_layers = (2, 3, 4)
  c.model.extra_blocks = "none"
  c.model.anchor_sizes = ((12, 16), (24, 32), (48, 64))
  c.model.aspect_ratios = (1.0, 2.0)
  c.model.detections_per_img = 100
  c.data.name = "digits_det"
  c.data.image_size = 64
  c.data.augment = ""  # no flip: a mirrored digit is another shape
  c.train.steps = 1000
  c.train.batch_size = 16
  c.train.log_every = 10
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 30
  c.optim.grad_clip_norm = 10.0
  c.eval.every = 0  # once, at the end
  c.eval.batch_size = 100
  c.checkpoint.every = 500
  return c
