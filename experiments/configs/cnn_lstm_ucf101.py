"""CNN + LSTM on UCF101 (tfds `ucf101`, split 1), LRCN-style: an ImageNet ResNet-18 per frame, an LSTM over 16 frames.

    python -m experiments.run --exp=cnn_lstm_ucf101 --config.finetune.weights=resnet18-f37072fd.pth
    # long videos, encoder frozen: cache its features once, then train the head alone
    python -m jaxcnn.video_features cache --exp=cnn_lstm_ucf101 --out=ucf101_feats \
        --config.data.augment= --config.finetune.weights=resnet18-f37072fd.pth
    python -m jaxcnn.video_features train --exp=cnn_lstm_ucf101 --features=ucf101_feats --config.data.augment=

The recipe of Donahue et al. 2015 ("Long-term Recurrent Convolutional Networks for Visual Recognition and
Description", LRCN, sec. 4.1): a CNN pretrained on ILSVRC-2012 applied to every frame, its features fed to an
LSTM, trained end to end on 16-frame clips of UCF101 split 1 with dropout; here with torchvision's ResNet-18
(`resnet18-f37072fd.pth`, loaded into `encoder` by finetune.into) instead of CaffeNet, a one-layer LSTM of
512 units, 16 frames sampled uniformly over each whole video at 224 x 224 (tfds stores 256 x 256 frames),
a random 224 crop of the frames padded by 16 px and a flip, the same for the whole clip. Data: `data.download
=True` (or `python -m jaxcnn.data.prepare ucf101`) prepares tfds `ucf101` (6.5 GB download).

Target (not run here: a GPU recipe, hours on one GPU): eval/accuracy >= 0.68 on the 3,783 test videos, one
clip each: LRCN's RGB LSTM reaches 68.2% on split 1 (Table 1 of the paper; 82.9% fusing optical flow,
which is not done here).
"""
from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.task = "video"
  c.model.name = "cnn_lstm"
  c.model.encoder_name = "resnet18"
  c.model.hidden_size = 512
  c.model.dropout = 0.5
  c.data.name = "ucf101"
  c.data.frames = 16
  c.data.image_size = 224
  c.data.augment = "crop,flip"
  c.data.crop_padding = 16
  c.data.download = True
  c.finetune.weights = ""            # give torchvision's resnet18-f37072fd.pth (ImageNet) on the command line
  c.finetune.converter_name = "resnet18"
  c.finetune.into = "encoder"
  c.train.steps = 4500               # ~15 epochs of the 9,537 training videos
  c.train.batch_size = 32
  c.train.log_every = 50
  c.optim.name = "nesterov"
  c.optim.lr = 0.01
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 5.0       # LSTMs: clip the gradient norm
  c.eval.every = 1500
  c.eval.batch_size = 64
  c.checkpoint.every = 500
  return c
