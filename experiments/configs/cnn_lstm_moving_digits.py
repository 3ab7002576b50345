"""CNN + LSTM over the frames of `moving_digits` clips: the label (the digit that appears first) needs their order.

    python -m experiments.run --exp=cnn_lstm_moving_digits                                   # LSTM head
    python -m experiments.run --exp=cnn_lstm_moving_digits --config.model.name=cnn_avg       # the baseline

A CIFAR ResNet-8 at half width (8/16/32 channels, `resnet_cifar` depth 8) encodes each 32 x 32 frame
(shared weights, the 8 frames of 32 clips folded into one batch of 256), then a one-layer LSTM (64 units)
reads the 8 frame features in order and its last state is classified. The baseline `cnn_avg` averages
the frame features instead: it sees both digits but not which came first, so ~50% is its ceiling (see
jaxcnn/data/video.py).

Expected: eval/accuracy >= 0.9 with the LSTM head, the temporal-average baseline <= 0.55, after 1,500
steps of 32 clips. Measured (2 CPU cores shared with other jobs, load average 11-21): LSTM 0.947 in 219
CPU-s, cnn_avg 0.481 in 220 CPU-s (cnn_tam, whose temporal convolutions also see the order: 0.968 in 260
CPU-s); plots/clips.png shows the first test clips with their predictions.
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.task = "video"
  c.model.name = "cnn_lstm"
  c.model.encoder_name = "resnet_cifar"
  c.model.encoder_options = {"depth": 8, "width": 0.5}
  c.model.hidden_size = 64
  c.data.name = "moving_digits"
  c.data.augment = "crop"     # one random shift per clip, the same on all its frames
  c.data.crop_padding = 2
  c.train.steps = 1500
  c.train.batch_size = 32
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 50
  c.eval.every = 500
  c.eval.batch_size = 200
  c.checkpoint.every = 500
  return c
