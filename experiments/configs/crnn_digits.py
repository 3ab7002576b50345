"""CRNN (Shi et al. 2015; `crnn_small`: the paper's layout, narrower) reading the offline `digit_strings`.

    python -m experiments.run --exp=crnn_digits

32x128 grey canvases of 3-8 scikit-learn digits side by side (jaxcnn/data/ocr.py: 10,000 train strings from
the digits' train images, 1,000 test strings from its test images), CTC loss (task `sequence`, greedy
decoding), Adam 2e-3 with a cosine schedule over 1,000 steps of 32, no augmentation. Expected:
eval/sequence_accuracy >= 0.8 on the 1,000 test strings (a whole string must be read exactly); the measured
figure, CPU time and load are in the README. Plots: test strings with predicted / true strings per eval.
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.sequence import sequence_defaults


def get_config():
  c = base_config()
  c.task = "sequence"
  c.sequence = sequence_defaults()
  c.model.name = "crnn_small"
  c.data.name = "digit_strings"
  c.data.image_size = (32, 128)
  c.data.normalize = "symmetric"
  c.data.augment = ""
  c.train.steps = 1000
  c.train.batch_size = 32
  c.train.log_every = 10
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 20
  c.eval.every = 250
  c.eval.batch_size = 200
  c.checkpoint.every = 250
  return c
