"""U-Net (Ronneberger et al. 2015; 'same' padding, batch norm, base width 16, 3 levels) on the offline
`digits_seg` canvases: 11 classes.

    python -m experiments.run --exp=unet_digits

64x64 canvases of 2-4 scikit-learn digits (jaxcnn/data/canvas.py), per-pixel softmax cross-entropy,
Adam (3e-3) with a cosine schedule over 1,000 steps of 32, random scale 0.75-1.5 and crops with ignore
padding (no flips: a mirrored digit is another shape). Expected: eval/miou >= 0.5 on the 500
test canvases; the measured figure is in the README.
"""
from experiments.configs.common import segmentation_config


def get_config():
  c = segmentation_config()
  c.model.name = "unet"
  c.model.base = 16
  c.model.depth = 3
  c.model.batch_norm = True
  c.data.name = "digits_seg"
  c.data.image_size = 64
  c.data.augment = "scale,crop"  # no flip: a mirrored digit is another shape
  c.data.scale_range = (0.75, 1.5)
  c.train.steps = 1000
  c.train.batch_size = 32
  c.train.log_every = 10
  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 20
  c.eval.every = 250
  c.eval.batch_size = 64
  c.checkpoint.every = 250
  return c
