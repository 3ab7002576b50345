"""MobileNet v1 (Howard et al. 2017), v2 (Sandler et al. 2018) and v3 (Howard et al. 2019; v2 and v3 as torchvision).

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

`mobilenet_v3_large` / `mobilenet_v3_small`: torchvision's MobileNetV3
(Howard et al. 2019; 5,483,032 / 2,542,856 parameters at 1000 classes): a
3x3/2 conv-BN-hardswish stem to 16 channels, 15 / 11 inverted residual blocks
(paper Tables 1 and 2: 1x1 expansion where the width changes, k x k
depthwise conv with the stride, squeeze-and-excitation where the table says
so, linear 1x1 projection; ReLU or hardswish per block; identity shortcut
where stride 1 and channels match), a 1x1 conv-BN-hardswish to 6x the last
width (960 / 576), global average pooling, then torchvision's classifier:
linear to 1280 / 1024, hardswish, dropout 0.2, linear to the classes. The SE
squeezes the expanded width to `make_divisible(expanded // 4, 8)` with ReLU
and gates with a hard sigmoid. BatchNorm eps 1e-3 and torch momentum 0.01
(0.99 in flax's convention), as torchvision. `width_mult` and `reduced_tail`
(the last stage at half width) are torchvision's options.

`dilated=True` (torchvision's option for its segmentation models): the last
stage keeps output stride 16 and dilates its depthwise convolutions by 2
instead (no parameter changes).

v3 backbone use: `return_features=True` returns {'stem', 'stage1'..'stage5',
'low', 'high'}: the stem output, the last output at strides 2, 4, 8, 16, 32
(large: 16, 16, 24, 40, 112, 160 channels; small: 16 (the stem), 16, 24, 48,
96; with `dilated` 'stage5' is at stride 16), and the two maps torchvision's
segmentation heads tap: 'low', the output of the strided block that reaches
output stride 8 (large: block 4, 40 channels; small: block 2, 24 channels;
torchvision's `stage_indices[-4]`), and 'high', the 1x1 conv to 960 / 576
channels (`last_conv`, torchvision's last `features` entry; output stride 16
when dilated). DeepLabV3 feeds 'high' to its head and 'low' to its auxiliary
head; LR-ASPP uses both. 'tail_expand' is the 1x1 expansion output of the
block that opens the last stage (large: 672 channels at stride 16), where
SSDLite attaches its first prediction layer (the paper's section 6.2).
`bn_momentum`, `bn_epsilon` and `kernel_init` (of every convolution) default to
torchvision's classification settings; SSDLite and Faster R-CNN set their own.

Parameter names: v1 `stem`, `block{i}/{depthwise,pointwise}`, `classifier`;
v2 `stem`, `block{i}/{expand,depthwise,project}`, `head`, `classifier`;
v3 `stem`, `block{i}/{expand,depthwise,se/{fc1,fc2},project}`, `last_conv`,
`classifier/{fc1,fc2}` (the backbone is everything but `classifier`). Each
conv unit is a `layers.ConvBNAct` (`conv`, `bn`); `jaxcnn.convert.mobilenet`
maps torchvision's `features.<i>.conv.<j>` (v2) and `features.<i>.block.<j>`
(v3) names onto these. Initialisation as torchvision: Kaiming-normal
(fan_out) convolutions, N(0, 0.01) classifiers.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv
from jaxcnn.layers.conv_norm import ConvBNAct, conv_kaiming_fan_out
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


# MobileNet v3 (paper Tables 1 and 2): kernel, expanded channels, output channels, SE, hardswish, stride.
# The blocks from the last stride 2 on form the last stage, which `dilated` and `reduced_tail` change.
V3_LARGE = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
            (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
            (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
            (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
            (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1))
V3_SMALL = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
            (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
            (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
            (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1))
# arch: (blocks, width of the classifier's hidden layer)
V3_ARCHS = {"large": (V3_LARGE, 1280), "small": (V3_SMALL, 1024)}
V3_STEM = 16


class SqueezeExcite(nn.Module):
  """x * gate(fc2(activation(fc1(mean_hw(x))))), the fcs 1x1 convs with bias: torchvision's SE of MobileNetV3
  (ReLU, hard sigmoid) and, with SiLU and sigmoid, of EfficientNet."""
  squeeze_channels: int
  activation: Any = nn.relu
  gate: Any = nn.hard_sigmoid
  kernel_init: Any = conv_kaiming_fan_out
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, kernel_size=(1, 1), kernel_init=self.kernel_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = self.activation(conv(self.squeeze_channels, name="fc1")(scale))
    return x * self.gate(conv(x.shape[-1], name="fc2")(scale))


class InvertedResidualV3(nn.Module):
  """1x1 expand (where the width changes) - k x k depthwise - SE (optional) - 1x1 linear projection (+ identity)."""
  features: int
  expanded: int
  kernel_size: int
  strides: int
  dilation: int
  use_se: bool
  activation: Any
  unit: Any  # ConvBNAct partial with dtypes and BN settings

  @nn.compact
  def __call__(self, x, train: bool = False, return_expanded: bool = False):
    y = x
    if self.expanded != x.shape[-1]:
      y = self.unit(self.expanded, 1, activation=self.activation, name="expand")(y, train)
    expanded = y
    # torchvision: a dilated block does not stride (its stride becomes the dilation)
    strides = 1 if self.dilation > 1 else self.strides
    y = self.unit(self.expanded, self.kernel_size, strides, groups=self.expanded, activation=self.activation,
                  dilation=self.dilation, name="depthwise")(y, train)
    if self.use_se:
      y = SqueezeExcite(make_divisible(self.expanded // 4, 8), dtype=self.unit.keywords["dtype"],
                        param_dtype=self.unit.keywords["param_dtype"],
                        kernel_init=self.unit.keywords.get("kernel_init", conv_kaiming_fan_out), name="se")(y)
    y = self.unit(self.features, 1, activation=None, name="project")(y, train)
    if self.strides == 1 and x.shape[-1] == self.features:
      y = x + y
    return (y, expanded) if return_expanded else y


class MobileNetV3Classifier(nn.Module):
  """torchvision's v3 classifier on pooled features: linear - hardswish - dropout - linear."""
  hidden: int
  num_classes: int
  dropout_rate: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.hard_swish(dense(self.hidden, name="fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, name="fc2")(x)


class MobileNetV3(nn.Module):
  """torchvision's MobileNetV3 large / small, optionally dilated for segmentation (see module doc)."""
  arch: str = "large"
  width_mult: float = 1.0
  reduced_tail: bool = False       # torchvision's option: the last stage at half width
  dilated: bool = False            # the last stage at output stride 16, depthwise convs dilated by 2
  bn_momentum: float = 0.99        # flax convention: torch's momentum 0.01 (SSDLite: 0.97, torch's 0.03)
  bn_epsilon: float = 1e-3         # torchvision's detection backbones (Faster R-CNN): plain BatchNorm2d, 1e-5
  kernel_init: Any = conv_kaiming_fan_out  # of every convolution (SSDLite from scratch: N(0, 0.03))
  dropout_rate: float = 0.2
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.arch not in V3_ARCHS:
      raise UserError(f"arch={self.arch!r} is not a MobileNetV3 (allowed: {', '.join(V3_ARCHS)})")
    if not self.width_mult > 0:
      raise UserError(f"width_mult={self.width_mult} must be positive")
    _check_dropout(self.dropout_rate)
    super().__post_init__()

  def blocks(self):
    """(kernel, expanded, output channels, SE, hardswish, stride, dilation) of each block, widths adjusted."""
    table, _ = V3_ARCHS[self.arch]
    last_stage = max(i for i, b in enumerate(table) if b[5] == 2)
    adjust = lambda c: make_divisible(c * self.width_mult, 8)
    divider = 2 if self.reduced_tail else 1
    blocks = []
    for i, (k, expanded, out, se, hs, stride) in enumerate(table):
      if i >= last_stage:
        out //= divider
        expanded = expanded if i == last_stage else expanded // divider
      dilation = 2 if self.dilated and i >= last_stage else 1
      blocks.append((k, adjust(expanded), adjust(out), se, hs, stride, dilation))
    return blocks

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(ConvBNAct, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                             bn_axis_name=self.bn_axis_name, kernel_init=self.kernel_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    x = unit(make_divisible(V3_STEM * self.width_mult, 8), 3, 2, activation=nn.hard_swish, name="stem")(x, train)
    features, stride = {"stem": x, "stage1": x}, 2
    blocks = self.blocks()
    last_stage = max(i for i, b in enumerate(blocks, start=1) if b[5] == 2)
    for i, (k, expanded, out, se, hs, s, dilation) in enumerate(blocks, start=1):
      block = InvertedResidualV3(out, expanded, k, s, dilation, se, nn.hard_swish if hs else nn.relu, unit,
                                 name=f"block{i}")
      if i == last_stage:
        x, features["tail_expand"] = block(x, train, return_expanded=True)
      else:
        x = block(x, train)
      stride *= s
      features[f"stage{stride.bit_length() - 1}"] = x  # the last output at each (undilated) stride
      if s == 2 and stride == 8:
        features["low"] = x
    x = unit(6 * x.shape[-1], 1, activation=nn.hard_swish, name="last_conv")(x, train)
    if self.return_features:
      return {**features, "high": x}
    x = jnp.mean(x, axis=(1, 2))
    _, hidden = V3_ARCHS[self.arch]
    hidden = make_divisible(hidden // (2 if self.reduced_tail else 1) * self.width_mult, 8)
    return MobileNetV3Classifier(hidden, self.num_classes, self.dropout_rate, self.dtype, self.param_dtype,
                                 name="classifier")(x, train)


register_model("mobilenet_v3_large", arch="large")(MobileNetV3)
register_model("mobilenet_v3_small", arch="small")(MobileNetV3)
