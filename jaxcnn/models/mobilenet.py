"""MobileNet v1 (Howard et al. 2017) and MobileNet v2 (Sandler et al. 2018, as torchvision).

`mobilenet_v1`: a 3x3/2 conv, then 13 depthwise separable convolutions
(3x3 depthwise conv-BN-ReLU, 1x1 pointwise conv-BN-ReLU; paper Table 1),
global average pooling and a linear classifier. The width multiplier `alpha`
thins every layer to int(alpha * channels) (the paper's alpha M; Keras rounds
the same way): 4,231,976 parameters at alpha=1.0 (the paper's Table 8: 4.2M;
Keras' `MobileNet` counts the same plus its BN statistics), 2.6M / 1.3M / 0.5M
at 0.75 / 0.5 / 0.25 as in Table 6. The paper's resolution multiplier rho is
simply the input size (224, 192, 160, 128 for rho = 1, 6/7, 5/7, 4/7): the
model takes any size, as pooling is global. ReLU as in the paper (TF-slim and
Keras use ReLU6). `dropout_rate` (default 0, the paper has none) acts before
the classifier.

`mobilenet_v2`: torchvision's MobileNetV2 (3,504,872 parameters): a 3x3/2
conv to 32 channels, 17 inverted residual blocks (1x1 expansion by t,
3x3 depthwise with stride s, linear 1x1 projection; identity shortcut where
stride 1 and channels match), a 1x1 conv to 1280, global average pooling,
dropout 0.2 and the classifier; ReLU6 throughout. `width_mult` scales every
layer's channels, rounded to multiples of `round_nearest` (8) as torchvision
does (the last conv is never thinned below 1280).

`cifar_stem=True` (registered as `mobilenet_v2_cifar`, 10 classes, no
dropout): the CIFAR layout of kuangliu/pytorch-cifar (`models/mobilenetv2.py`):
the stem conv and the first block of the 24-channel stage use stride 1
instead of 2, so a 32x32 image keeps 32x32 through the first two stages and
ends at 4x4 (total stride 8). The blocks stay torchvision's; kuangliu's
also add a 1x1 conv-BN projection shortcut wherever a stride-1 block changes
the width and an expansion conv in the t=1 block, which the paper and
torchvision do not have, so the counts differ: 2,236,682 parameters here
at 10 classes (the stride change adds none).

Input sizes: both run on 32x32 (the last map is 1x1) and 224x224, and any
size in between or above.

Backbone use: `return_features=True` returns {'stem', 'stage1'..'stage5'}:
the stem conv output (stride 2) and the output of the last block at each
stride 2, 4, 8, 16, 32 (v2: 16, 24, 32, 96, 320 channels; v1: 64, 128,
256, 512, 1024 times alpha). With `cifar_stem` the stem is at stride 1
and 'stage1'..'stage4' (24, 32, 96, 320 channels) at strides 1, 2, 4, 8. The v2 head conv (to 1280) belongs to the
classifier and is skipped.

Parameter names: v1 `stem`, `block{i}/{depthwise,pointwise}`, `classifier`;
v2 `stem`, `block{i}/{expand,depthwise,project}`, `head`, `classifier`, each
conv unit a `layers.ConvBNAct` (`conv`, `bn`); `jaxcnn.convert.mobilenet`
maps torchvision's `features.<i>.conv.<j>` names onto v2's. Initialisation as
torchvision: Kaiming-normal (fan_out) convolutions, N(0, 0.01) classifier.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers.conv_norm import ConvBNAct
from jaxcnn.registry import register_model

dense_init = nn.initializers.normal(0.01)

# MobileNet v1 (paper Table 1): (pointwise channels, depthwise stride) of the 13 separable layers.
V1_LAYERS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# MobileNet v2 (paper Table 2): expansion t, channels c, repeats n, first stride s.
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# kuangliu/pytorch-cifar's CIFAR change: the 24-channel stage keeps the resolution (with a stride-1 stem).
V2_CIFAR_SETTING = V2_SETTING[:1] + ((6, 24, 2, 1),) + V2_SETTING[2:]


def make_divisible(value: float, divisor: int) -> int:
  """Nearest multiple of `divisor`, at least `divisor`, never more than 10% below `value` (TF / torchvision)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def _check_dropout(rate: float):
  if not 0.0 <= rate < 1.0:
    raise UserError(f"dropout_rate={rate} must be in [0, 1)")


def _classifier(module, x, train: bool):
  x = jnp.mean(x, axis=(1, 2))
  x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
  return nn.Dense(module.num_classes, kernel_init=dense_init, dtype=module.dtype,
                  param_dtype=module.param_dtype, name="classifier")(x)


def _unit(module, activation):
  """ConvBNAct with the module's dtypes and BN axis."""
  return functools.partial(ConvBNAct, activation=activation, bn_axis_name=module.bn_axis_name,
                           dtype=module.dtype, param_dtype=module.param_dtype)


class DepthwiseSeparable(nn.Module):
  """3x3 depthwise conv(stride)-BN-ReLU, then 1x1 pointwise conv-BN-ReLU to `features` channels."""
  features: int
  strides: int
  unit: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.unit(x.shape[-1], 3, self.strides, groups=x.shape[-1], name="depthwise")(x, train)
    return self.unit(self.features, 1, name="pointwise")(x, train)


class MobileNetV1(nn.Module):
  """Howard et al. 2017 with width multiplier `alpha` (see module doc)."""
  alpha: float = 1.0
  dropout_rate: float = 0.0
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if not self.alpha > 0 or int(32 * self.alpha) < 1:
      raise UserError(f"alpha={self.alpha} must be positive and leave the first layer a channel (alpha >= 1/32)")
    _check_dropout(self.dropout_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = _unit(self, nn.relu)
    x = unit(int(32 * self.alpha), 3, 2, name="stem")(x, train)
    features = {"stem": x}
    for i, (channels, strides) in enumerate(V1_LAYERS, start=1):
      x = DepthwiseSeparable(int(channels * self.alpha), strides, unit, name=f"block{i}")(x, train)
      if i == len(V1_LAYERS) or V1_LAYERS[i][1] == 2:  # the last layer at this stride
        features[f"stage{len(features)}"] = x
    if self.return_features:
      return features
    return _classifier(self, x, train)


class InvertedResidual(nn.Module):
  """1x1 expand (t > 1) - 3x3 depthwise(stride) - 1x1 linear projection, + identity where shapes allow."""
  features: int
  strides: int
  expand_ratio: int
  unit: Any
  linear_unit: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = self.unit(hidden, 1, name="expand")(y, train)
    y = self.unit(hidden, 3, self.strides, groups=hidden, name="depthwise")(y, train)
    y = self.linear_unit(self.features, 1, name="project")(y, train)
    if self.strides == 1 and x.shape[-1] == self.features:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """torchvision's MobileNetV2 with `width_mult` (see module doc)."""
  width_mult: float = 1.0
  round_nearest: int = 8
  dropout_rate: float = 0.2
  cifar_stem: bool = False         # True: stride-1 stem and 24-channel stage (kuangliu's CIFAR layout)
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if not self.width_mult > 0:
      raise UserError(f"width_mult={self.width_mult} must be positive")
    if self.round_nearest < 1:
      raise UserError(f"round_nearest={self.round_nearest} must be >= 1 (1 turns rounding off)")
    _check_dropout(self.dropout_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit, linear_unit = _unit(self, nn.relu6), _unit(self, None)
    channels = functools.partial(make_divisible, divisor=self.round_nearest)
    setting = V2_CIFAR_SETTING if self.cifar_stem else V2_SETTING
    x = unit(channels(32 * self.width_mult), 3, 1 if self.cifar_stem else 2, name="stem")(x, train)
    features, index = {"stem": x}, 0
    for stage, (t, c, n, s) in enumerate(setting):
      for j in range(n):
        index += 1
        x = InvertedResidual(channels(c * self.width_mult), s if j == 0 else 1, t, unit, linear_unit,
                             name=f"block{index}")(x, train)
      next_stride = setting[stage + 1][3] if stage + 1 < len(setting) else 2
      if next_stride == 2:  # the last block at this stride
        features[f"stage{len(features)}"] = x
    if self.return_features:
      return features
    x = unit(channels(1280 * max(1.0, self.width_mult)), 1, name="head")(x, train)
    return _classifier(self, x, train)


register_model("mobilenet_v1")(MobileNetV1)
register_model("mobilenet_v2")(MobileNetV2)
register_model("mobilenet_v2_cifar", cifar_stem=True, dropout_rate=0.0, num_classes=10)(MobileNetV2)
