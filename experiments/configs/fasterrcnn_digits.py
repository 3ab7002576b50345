"""Faster R-CNN (torchvision's fasterrcnn_resnet50_fpn design on a ResNet-18) on the offline `digits_det` canvases.

    python -m experiments.run --exp=fasterrcnn_digits

torchvision's Faster R-CNN (FPN with a max-pool level, RPN with Matcher 0.7/0.3 and a balanced 50% sampler,
RoIAlign 7x7 over the first four pyramid maps, TwoMLPHead, Matcher 0.5 and a 25% foreground sampler for the
RoIs, smooth L1 box losses, score 0.05 / NMS 0.5 post-processing) made small enough for 2 CPU cores and
trained from scratch: 64x64 canvases of 2-4 scikit-learn digits of 12-28 px (see jaxcnn/data/canvas.py),
10 classes (+ background). ResNet-18 C2-C4 (strides 4/8/16) + the max-pool level, a 64-channel FPN,
anchors (10, 14), (20, 28), (40, 56), (80, 112) px x aspect ratios h/w 1 and 2 (digits are taller than
wide), 300 pre-NMS / 100 post-NMS proposals per level and image in training (150 / 50 in eval), 64 sampled
anchors and 64 sampled RoIs per image, a 256-wide box head. AdamW 1e-3 (weight decay 1e-4), 30 warmup steps
and cosine decay over 800 steps of 16, gradients clipped at norm 10, no augmentation.
Target: eval/map50 >= 0.7 on the 500 test canvases within 10 minutes on 2 idle CPU cores
(`../shared/checks/frcnn-digits`). Measured (seed 0): eval/map50 0.994, AP@[.5:.95] 0.829, map75 0.983,
voc07_map50 0.972; 398 s of CPU time (user + sys), about 210 s on the idle machine, 2,061 s of wall time on
the shared machine (load average 7-17); the check again: the same figures, 371 s of CPU time (about 195 s
idle), 650 s of wall time at load average 5-8.
"""
from experiments.configs.common import detection_config


def get_config():
  c = detection_config()
  c.model.name = "fasterrcnn_resnet50_fpn"
  c.model.backbone_name = "resnet18"
  c.model.returned_layers = (1, 2, 3)
  c.model.fpn_channels = 64
  c.model.anchor_sizes = ((10, 14), (20, 28), (40, 56), (80, 112))
  c.model.aspect_ratios = (1.0, 2.0)
  c.model.rpn_pre_nms_top_n_train = 300
  c.model.rpn_post_nms_top_n_train = 100
  c.model.rpn_pre_nms_top_n_test = 150
  c.model.rpn_post_nms_top_n_test = 50
  c.model.rpn_batch_size_per_image = 64
  c.model.box_batch_size_per_image = 64
  c.model.representation_size = 256
  c.model.detections_per_img = 100
  c.data.name = "digits_det"
  c.data.image_size = 64
  c.data.augment = ""  # no flip: a mirrored digit is another shape
  c.train.steps = 800
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
  c.checkpoint.every = 400
  return c
