"""CNN + RNN over frames: clip classification with a frame encoder from the zoo and a temporal head.

    model = create_model('cnn_lstm', encoder_name='resnet18', num_classes=101)
    logits = model.apply(variables, clips)                        # clips float32 [B, T, H, W, C]
    logits = model.apply(variables, clips, seq_lengths=lengths)   # int [B]: clip b's frames are t < lengths[b]

Registered: `cnn_lstm`, `cnn_gru`, `cnn_tam`, `cnn_avg`: one class, `FrameClassifier`, with `head` set
to 'lstm', 'gru', 'tam' or 'avg' (every other option the same).

Frame encoder (`encoder_name`, default resnet18): any registered classification model with a
`return_features` option (ResNets, VGG, MobileNets, EfficientNets, ConvNeXt, DenseNet, GoogLeNet, ...),
built with return_features=True and `encoder_options` (e.g. {'depth': 8} for resnet_cifar); its
parameters are the classification model's minus the classifier, under 'encoder', so ImageNet weights load
with `finetune.into='encoder'`. Time is folded into the batch: the clip [B, T, H, W, C] runs as one batch
of B * T frames (fixed shapes, one convolution batch, one set of weights for every frame; BatchNorm
statistics over all B * T frames in training). The frame's features are the encoder's last feature map
(or `encoder_feature`, a key of its features dict) averaged over space, [B, T, F]; the 'tam' head keeps
the maps, [B, T, h, w, F].

Heads (`head`):
  lstm, gru  a `jaxcnn.layers.recurrent` LSTM / GRU (hidden_size, num_layers, bidirectional, dropout
             between layers) over [B, T, F]; the clip's feature is the last layer's final hidden state,
             i.e. after each clip's last valid frame (bidirectional: the forward and backward ones
             concatenated, PyTorch's h_n[-2:]); parameters under 'rnn'.
  tam        the temporal adaptive module (`jaxcnn.layers.temporal`, TANet) on the frame maps, then the
             average over time and space; built for one T (its global branch's FC reads the time axis),
             so it takes no seq_lengths; parameters under 'tam'.
  avg        the average of the valid frames' features: temporal average pooling, the baseline that
             cannot see the order of the frames.
then dropout (`dropout`, on the clip feature, in training) and a Dense classifier ('classifier').

Precomputed features (`input='features'`): the model has no encoder and reads the per-frame features
[B, T, ...] that `encode` returns for a clip (what `jaxcnn.video_features` caches) from the batch field
'frame_features' (`input_field`; the classification task feeds that field). Its head's parameters have
the end-to-end model's names, so `{'encoder': ..., **head}` is the end-to-end model with that head.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers.recurrent import Recurrent
from jaxcnn.layers.temporal import TemporalAdaptiveModule
from jaxcnn.registry import create_model, model_options, register_model

HEADS = ("lstm", "gru", "tam", "avg")
INPUTS = ("clips", "features")
FRAME_FEATURES = "frame_features"


class FrameClassifier(nn.Module):
  """Clip classifier: a per-frame encoder (shared weights) and a temporal head (see the module doc)."""
  encoder_name: str = "resnet18"
  encoder_options: Any = None        # dict of the encoder model's options
  encoder_feature: str = ""          # key of the encoder's features dict ('': its last entry)
  head: str = "lstm"                 # lstm | gru | tam | avg
  hidden_size: int = 256
  num_layers: int = 1
  bidirectional: bool = False
  rnn_dropout: float = 0.0           # between recurrent layers (PyTorch's `dropout`)
  dropout: float = 0.0               # on the clip feature before the classifier
  tam_kernel_size: int = 3
  input: str = "clips"               # clips: [B, T, H, W, C] | features: precomputed `encode` outputs
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @property
  def input_field(self) -> str:
    """The batch field the classification task feeds this model."""
    return FRAME_FEATURES if self.input == "features" else "image"

  def setup(self):
    if self.head not in HEADS:
      raise unknown("video head (model.head)", self.head, HEADS)
    if self.input not in INPUTS:
      raise unknown("model input (model.input)", self.input, INPUTS)
    if self.num_classes < 1 or not 0.0 <= self.dropout < 1.0:
      raise UserError(f"need num_classes >= 1 and 0 <= dropout < 1, got {self.num_classes}, {self.dropout}")
    if self.input == "clips":
      self.encoder = self._make_encoder()
    if self.head in ("lstm", "gru"):
      self.rnn = Recurrent(self.hidden_size, cell=self.head, num_layers=self.num_layers,
                           bidirectional=self.bidirectional, dropout=self.rnn_dropout, dtype=self.dtype,
                           param_dtype=self.param_dtype)
    elif self.head == "tam":
      self.tam = TemporalAdaptiveModule(kernel_size=self.tam_kernel_size, bn_axis_name=self.bn_axis_name,
                                        dtype=self.dtype, param_dtype=self.param_dtype)
    self.head_dropout = nn.Dropout(self.dropout)
    self.classifier = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)

  def _make_encoder(self) -> nn.Module:
    options = model_options(self.encoder_name)
    if options is not None and "return_features" not in options:
      raise UserError(f"model '{self.encoder_name}' cannot be a frame encoder: it has no return_features option "
                      "(use e.g. resnet18, resnet_cifar, vgg11_bn, mobilenet_v2, efficientnet_b0, convnext_tiny)")
    kwargs = dict(self.encoder_options or {})
    extra = {"dtype": self.dtype, "param_dtype": self.param_dtype, "bn_axis_name": self.bn_axis_name}
    for key, value in extra.items():
      if options is None or key in options:
        kwargs.setdefault(key, value)
    return create_model(self.encoder_name, return_features=True, **kwargs)

  def encode(self, clips, train: bool = False):
    """Per-frame features of clips [B, T, H, W, C]: [B, T, F] (pooled), or [B, T, h, w, F] for the 'tam' head."""
    if self.input != "clips":
      raise UserError("this model reads precomputed features (model.input='features'); it has no encoder")
    if clips.ndim != 5:
      raise UserError(f"a video model takes clips [batch, frames, height, width, channels], got shape "
                      f"{tuple(clips.shape)}")
    b, t = clips.shape[:2]
    features = self.encoder(clips.reshape((b * t,) + clips.shape[2:]), train=train)
    if self.encoder_feature and self.encoder_feature not in features:
      raise unknown(f"feature of encoder '{self.encoder_name}' (model.encoder_feature)", self.encoder_feature, features)
    maps = features[self.encoder_feature or list(features)[-1]]
    if self.head != "tam":
      maps = jnp.mean(maps.astype(jnp.float32), axis=(1, 2)).astype(maps.dtype)
    return maps.reshape((b, t) + maps.shape[1:])

  def classify(self, frames, seq_lengths=None, train: bool = False):
    """Logits [B, num_classes] of per-frame features (what `encode` returns)."""
    if self.head in ("lstm", "gru"):
      _, carries = self.rnn(frames, seq_lengths=seq_lengths, train=train)
      last = carries[-2:] if self.bidirectional else carries[-1:]
      clip = jnp.concatenate([c[1] if self.head == "lstm" else c for c in last], axis=-1)  # LSTM carry: (c, h)
    elif self.head == "tam":
      if seq_lengths is not None:
        raise UserError("the 'tam' head is built for one clip length and takes no seq_lengths")
      clip = jnp.mean(self.tam(frames, train=train).astype(jnp.float32), axis=(1, 2, 3))
    else:
      valid = jnp.ones(frames.shape[:2], jnp.float32) if seq_lengths is None else (
          jnp.arange(frames.shape[1])[None, :] < jnp.asarray(seq_lengths)[:, None]).astype(jnp.float32)
      clip = jnp.einsum("bt,btf->bf", valid, frames.astype(jnp.float32)) / jnp.sum(valid, 1, keepdims=True)
    clip = self.head_dropout(clip.astype(self.dtype), deterministic=not train)
    return self.classifier(clip)

  def __call__(self, x, train: bool = False, seq_lengths=None):
    frames = x if self.input == "features" else self.encode(x, train=train)
    return self.classify(frames, seq_lengths=seq_lengths, train=train)


for _head in HEADS:
  register_model(f"cnn_{_head}", head=_head)(FrameClassifier)
