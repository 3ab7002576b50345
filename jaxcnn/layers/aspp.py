"""Dense-prediction heads: ASPP (DeepLabV3), `DeepLabHead` and `FCNHead` as torchvision builds them.

`ASPP` (Chen et al. 2017, "Rethinking Atrous Convolution", sec. 3.3): five
parallel branches on the backbone's last map, each conv-BN-ReLU with
`features` (256) channels: a 1x1 conv, three 3x3 convs at the given atrous
rates (padding = rate, so the map keeps its size), and image pooling (global
average, 1x1 conv, BN, ReLU, spread back over the map); their concatenation
is projected by a 1x1 conv-BN-ReLU and dropout (0.5 in torchvision).
`DeepLabHead` is torchvision's: ASPP, 3x3 conv-BN-ReLU, 1x1 conv to the
classes. `FCNHead` is torchvision's FCN (and auxiliary) head: 3x3 conv to a
quarter of the input channels, BN, ReLU, dropout 0.1, 1x1 conv to the classes.

Upsampling the image-pooling branch from 1x1 is a broadcast: that is what a
bilinear `F.interpolate` of a 1x1 map gives, at any output size.

Submodule names (`jaxcnn.convert.segmentation` maps torchvision's onto them):
  ASPP:        branch0 (1x1), branch1..3 (atrous), pooling, project; each {conv, bn}
  DeepLabHead: aspp, head {conv, bn} (3x3), logits
  FCNHead:     head {conv, bn} (3x3), logits
Initialisation: PyTorch's default for these heads (torchvision leaves them
at it): kernels uniform(+-1/sqrt(fan_in)), BN scale 1 / bias 0; the logits
bias starts at zero.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers.conv import Conv
from jaxcnn.layers.conv_norm import ConvBNAct

# torch.nn.Conv2d's default kernel init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def ConvBNReLU(features: int, kernel_size: int = 1, dilation: int = 1, **kwargs) -> ConvBNAct:
  """torchvision's bias-free conv (atrous `dilation`, "same" padding) -> BN -> ReLU of its segmentation heads:
  `ConvBNAct` with torch.nn.Conv2d's default kernel init and torch's BN settings (submodules `conv`, `bn`)."""
  return ConvBNAct(features, kernel_size, dilation=dilation, activation=nn.relu, bn_momentum=0.9, bn_epsilon=1e-5,
                   kernel_init=torch_default_init, **kwargs)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: [B, H, W, C] -> [B, H, W, features]."""
  atrous_rates: Sequence[int] = (12, 24, 36)
  features: int = 256
  dropout_rate: float = 0.5
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = lambda k, d, name: ConvBNReLU(self.features, k, d, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                                         param_dtype=self.param_dtype, name=name)
    branches = [unit(1, 1, "branch0")(x, train)]
    for i, rate in enumerate(self.atrous_rates, start=1):
      branches.append(unit(3, int(rate), f"branch{i}")(x, train))
    pooled = unit(1, 1, "pooling")(jnp.mean(x, axis=(1, 2), keepdims=True), train)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
    y = unit(1, 1, "project")(jnp.concatenate(branches, axis=-1), train)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


def _logits(module, num_classes: int, x):
  return Conv(num_classes, (1, 1), kernel_init=torch_default_init, dtype=module.dtype,
              param_dtype=module.param_dtype, name="logits")(x)


class DeepLabHead(nn.Module):
  """torchvision's DeepLabHead: ASPP -> 3x3 conv-BN-ReLU (256) -> 1x1 conv to `num_classes`.

  `conv_head=False` leaves out the 3x3 conv: ASPP straight into the 1x1
  classifier, as the DeepLabV3 paper (sec. 3.3) describes its head.
  """
  num_classes: int
  atrous_rates: Sequence[int] = (12, 24, 36)
  features: int = 256
  conv_head: bool = True
  dropout_rate: float = 0.5
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    x = ASPP(self.atrous_rates, self.features, self.dropout_rate, name="aspp", **kw)(x, train)
    if self.conv_head:
      x = ConvBNReLU(self.features, 3, name="head", **kw)(x, train)
    return _logits(self, self.num_classes, x)


class FCNHead(nn.Module):
  """torchvision's FCNHead: 3x3 conv-BN-ReLU to C // 4 channels, dropout 0.1, 1x1 conv to `num_classes`."""
  num_classes: int
  dropout_rate: float = 0.1
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ConvBNReLU(x.shape[-1] // 4, 3, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="head")(x, train)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _logits(self, self.num_classes, x)
