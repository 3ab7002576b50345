"""Network in Network (Lin, Chen & Yan 2014).

An mlpconv block is a k x k convolution followed by two 1x1 convolutions
(the paper's "cascaded cross channel parametric pooling", a small MLP
shared across positions), each with ReLU. Blocks are separated by pooling
and dropout; the last block outputs one map per class, and global average
pooling of those maps gives the logits (no fully connected layer).

The layer sizes are those of the authors' released Caffe models:
  `nin` (config 'cifar', 10 classes, 966,986 parameters): mlpconv 5x5-192 /
    160 / 96, max-pool 3x3/2, dropout 0.5; mlpconv 5x5-192 / 192 / 192,
    average-pool 3x3/2, dropout 0.5; mlpconv 3x3-192 / 192 / classes, global
    average pooling.
  `nin_imagenet` (config 'imagenet', 1000 classes, 7,595,176 parameters):
    mlpconv 11x11/4-96 / 96 / 96, max-pool; 5x5-256 / 256 / 256, max-pool;
    3x3-384 / 384 / 384, max-pool, dropout 0.5; 3x3-1024 / 1024 / classes,
    global average pooling.
Pools round their output size up (Caffe). As in those models a ReLU follows
every convolution, including the last one, so the class maps (and the
logits) are non-negative.

Input sizes: the CIFAR config takes 32x32 (the paper's) and any size >= 4x4,
e.g. 224x224; the ImageNet config needs at least 39x39 (a 11x11/4 conv and
three 3x3/2 pools; the paper uses 224x224); smaller inputs raise a UserError.

Backbone use: `return_features=True` returns {'stage1', 'stage2', ...}: the
output of each mlpconv block before its pooling (CIFAR strides 1, 2, 4;
ImageNet 4, 8, 16, 32), the last one being the class maps.

Parameter names: `block{i}/{conv, mlp1, mlp2}`. Initialisation: He-normal
(fan_in) kernels, zero biases (the Caffe models used hand-tuned Gaussians).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, avg_pool, max_pool
from jaxcnn.registry import register_model

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# Per block: (kernel, stride, padding, (conv, mlp1, mlp2) widths; None = num_classes), then what follows it.
CONFIGS = {
    "cifar": (
        ((5, 1, 2, (192, 160, 96)), ("max", True)),
        ((5, 1, 2, (192, 192, 192)), ("avg", True)),
        ((3, 1, 1, (192, 192, None)), (None, False)),
    ),
    "imagenet": (
        ((11, 4, 0, (96, 96, 96)), ("max", False)),
        ((5, 1, 2, (256, 256, 256)), ("max", False)),
        ((3, 1, 1, (384, 384, 384)), ("max", True)),
        ((3, 1, 1, (1024, 1024, None)), (None, False)),
    ),
}
MIN_SIZE = {"cifar": 4, "imagenet": 39}


class MlpConv(nn.Module):
  """k x k conv - ReLU - 1x1 conv - ReLU - 1x1 conv - ReLU."""
  widths: tuple
  kernel_size: int
  strides: int
  padding: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype)
    k = self.kernel_size
    x = nn.relu(conv(self.widths[0], (k, k), self.strides, padding=self.padding, name="conv")(x))
    x = nn.relu(conv(self.widths[1], (1, 1), name="mlp1")(x))
    return nn.relu(conv(self.widths[2], (1, 1), name="mlp2")(x))


class NIN(nn.Module):
  """Network in Network in the 'cifar' or 'imagenet' configuration (see module doc)."""
  config: str = "cifar"
  dropout_rate: float = 0.5
  return_features: bool = False
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.config not in CONFIGS:
      raise UserError(f"config={self.config!r} is not supported (allowed: {', '.join(map(repr, CONFIGS))})")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    if min(x.shape[1:3]) < MIN_SIZE[self.config]:
      raise UserError(f"NIN config '{self.config}' needs inputs of at least {MIN_SIZE[self.config]}x"
                      f"{MIN_SIZE[self.config]} pixels, got {x.shape[1]}x{x.shape[2]}")
    features = {}
    for i, ((kernel, stride, padding, widths), (pool, dropout)) in enumerate(CONFIGS[self.config], start=1):
      widths = tuple(self.num_classes if w is None else w for w in widths)
      x = MlpConv(widths, kernel, stride, padding, self.dtype, self.param_dtype, name=f"block{i}")(x)
      features[f"stage{i}"] = x
      if pool == "max":
        x = max_pool(x, 3, 2, ceil_mode=True)
      elif pool == "avg":
        x = avg_pool(x, 3, 2, ceil_mode=True)
      if dropout:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if self.return_features:
      return features
    return jnp.mean(x, axis=(1, 2))  # global average pooling of the class maps


register_model("nin", config="cifar", num_classes=10)(NIN)
register_model("nin_imagenet", config="imagenet", num_classes=1000)(NIN)
