"""EfficientNet-B0..B7 (Tan & Le 2019), laid out as torchvision's.

B0 (paper Table 1): a 3x3/2 conv to 32 channels, seven stages of MBConv
blocks, a 1x1 conv to 1280, global average pooling, dropout, the classifier.
An MBConv block is: 1x1 expansion conv (ratio 6; none when the ratio is 1) -
k x k depthwise conv (stride on the first block of a stage) - squeeze-and-
excitation (global pool, 1x1 conv to input_channels / 4, SiLU, 1x1 conv back,
sigmoid gate) - linear 1x1 projection; every conv has BN, SiLU after all but
the projection; where stride is 1 and channels match, stochastic depth and
an identity shortcut. Stochastic depth grows linearly with the block index,
`drop_path_rate * i / num_blocks` (torchvision's rule, rate 0.2), with the
'drop_path' rng (`drop_path_rng` names another stream).

Compound scaling: B1..B7 multiply channels by `width_mult` (rounded to
multiples of 8 as torchvision / the TF reference) and block counts by
`depth_mult` (rounded up); the resolution the paper trains each at (224, 240,
260, 300, 380, 456, 528, 600) is only the input size. Registered with
torchvision's multipliers, dropout and BatchNorm settings (B5-B7 use
eps 1e-3, momentum 0.01; B0-B4 torch's defaults); parameter counts at 1000
classes equal torchvision's:
  b0 5,288,548   b1 7,794,184   b2 9,109,994   b3 12,233,232
  b4 19,341,616  b5 30,389,784  b6 43,040,704  b7 66,347,960

Input sizes: 32x32 and up, any size (total stride 32, global pooling).

Backbone use: `return_features=True` returns {'stem', 'stage1'..'stage7'}:
the stem output (stride 2) and each stage's last block (strides 2, 4, 8, 16,
16, 32, 32); the 1x1 head conv belongs to the classifier and is skipped.

TF padding: `tf_same_padding=True` pads every convolution as TensorFlow's 'SAME' (stride-2 layers
pad (total // 2, total - total // 2), more at the bottom/right; stride 1 is the same as the default),
as the official TF EfficientNet and timm's `tf_efficientnet_*` do (EfficientDet's backbone). Only the
padding changes: the parameter tree is the same.

Parameter names: `stem`, `stage{s}_block{b}/{expand,depthwise,se/{fc1,fc2},
project}`, `head`, `classifier`; conv units are `layers.ConvBNAct`
(`conv`, `bn`). `jaxcnn.convert.efficientnet` maps torchvision's
`features.<s>.<b>.block.<j>` names. Initialisation as torchvision:
Kaiming-normal (fan_out) convolutions, classifier uniform +-1/sqrt(classes).
"""
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, DropPath
from jaxcnn.layers.conv_norm import ConvBNAct, conv_kaiming_fan_out
from jaxcnn.layers.drop import check_rate
from jaxcnn.models.mobilenet import SqueezeExcite, make_divisible
from jaxcnn.registry import register_model

# B0 stages (paper Table 1): expansion, kernel, first stride, input channels, output channels, blocks.
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

# torchvision's Linear init for EfficientNet: uniform(-1/sqrt(out), 1/sqrt(out)).
classifier_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


class MBConv(nn.Module):
  """Mobile inverted bottleneck with squeeze-and-excitation (see module doc)."""
  features: int
  expand_ratio: int
  kernel_size: int
  strides: int
  drop_path_rate: float
  unit: Any  # ConvBNAct partial with dtypes and BN settings
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  drop_path_rng: str = "drop_path"

  @nn.compact
  def __call__(self, x, train: bool = False):
    in_channels = x.shape[-1]
    expanded = make_divisible(in_channels * self.expand_ratio, 8)
    y = x
    if expanded != in_channels:
      y = self.unit(expanded, 1, activation=nn.silu, name="expand")(y, train)
    y = self.unit(expanded, self.kernel_size, self.strides, groups=expanded, activation=nn.silu,
                  name="depthwise")(y, train)
    y = SqueezeExcite(max(1, in_channels // 4), activation=nn.silu, gate=nn.sigmoid, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="se")(y)
    y = self.unit(self.features, 1, activation=None, name="project")(y, train)
    if self.strides == 1 and in_channels == self.features:
      y = DropPath(self.drop_path_rate, rng_collection=self.drop_path_rng)(y, deterministic=not train) + x
    return y


class EfficientNet(nn.Module):
  """EfficientNet with B0's stages scaled by `width_mult` and `depth_mult` (see module doc)."""
  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout_rate: float = 0.2
  drop_path_rate: float = 0.2
  bn_momentum: float = 0.9        # flax convention; torch momentum m is 1 - m here
  bn_epsilon: float = 1e-5
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  tf_same_padding: bool = False   # TensorFlow 'SAME' padding (module doc); default torchvision's (k - 1) // 2
  drop_path_rng: str = "drop_path"  # the rng stream of stochastic depth (a detector's task may only give 'dropout')

  def __post_init__(self):
    if not (self.width_mult > 0 and self.depth_mult > 0):
      raise UserError(f"width_mult={self.width_mult} and depth_mult={self.depth_mult} must be positive")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    check_rate("drop_path_rate", self.drop_path_rate)
    super().__post_init__()

  def stages(self):
    """(expansion, kernel, stride, output channels, blocks) of each scaled stage."""
    return [(t, k, s, make_divisible(c_out * self.width_mult, 8), int(math.ceil(n * self.depth_mult)))
            for t, k, s, _, c_out, n in B0_STAGES]

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(ConvBNAct, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                             bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                             padding="SAME" if self.tf_same_padding else None)
    x = unit(make_divisible(B0_STAGES[0][3] * self.width_mult, 8), 3, 2, activation=nn.silu,
             name="stem")(x, train)
    features = {"stem": x}
    stages = self.stages()
    total, index = sum(n for *_, n in stages), 0
    for s, (t, k, stride, channels, blocks) in enumerate(stages, start=1):
      for b in range(blocks):
        x = MBConv(channels, t, k, stride if b == 0 else 1, self.drop_path_rate * index / total, unit,
                   self.dtype, self.param_dtype, drop_path_rng=self.drop_path_rng,
                   name=f"stage{s}_block{b}")(x, train)
        index += 1
      features[f"stage{s}"] = x
    if self.return_features:
      return features
    x = unit(4 * x.shape[-1], 1, activation=nn.silu, name="head")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=classifier_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="classifier")(x)


# torchvision: (width_mult, depth_mult, dropout); B5-B7 use BatchNorm eps 1e-3 and momentum 0.01.
VARIANTS = {0: (1.0, 1.0, 0.2), 1: (1.0, 1.1, 0.2), 2: (1.1, 1.2, 0.3), 3: (1.2, 1.4, 0.3),
            4: (1.4, 1.8, 0.4), 5: (1.6, 2.2, 0.4), 6: (1.8, 2.6, 0.5), 7: (2.0, 3.1, 0.5)}

for _b, (_width, _depth, _dropout) in VARIANTS.items():
  _bn = dict(bn_momentum=0.99, bn_epsilon=1e-3) if _b >= 5 else {}
  register_model(f"efficientnet_b{_b}", width_mult=_width, depth_mult=_depth, dropout_rate=_dropout,
                 **_bn)(EfficientNet)
