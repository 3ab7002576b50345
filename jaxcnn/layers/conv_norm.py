"""Conv -> BatchNorm -> activation, the unit of MobileNet, EfficientNet and GoogLeNet.

The same block as torchvision's `Conv2dNormActivation` (and GoogLeNet's
`BasicConv2d`): a bias-free convolution with "same" padding (k - 1) // 2 for
odd kernels, a BatchNorm, an optional activation. Submodules are named `conv`
and `bn`, so a torchvision `<prefix>.0` / `<prefix>.1` pair maps onto them.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers.conv import Conv

# Kaiming-normal with fan_out, torchvision's default for these networks' convolutions.
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBNAct(nn.Module):
  """conv(k x k, stride, groups, dilation) -> BN -> activation (None: no activation)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  padding: Optional[int] = None           # None: dilation * (kernel_size - 1) // 2 ("same" for odd kernels)
  dilation: int = 1                       # atrous rate (DeepLab's ASPP, dilated MobileNetV3 stages)
  activation: Optional[Callable] = nn.relu
  bn_momentum: float = 0.9                # flax convention: torch's momentum 0.1
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  kernel_init: Callable = conv_kaiming_fan_out
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    padding = self.dilation * (self.kernel_size - 1) // 2 if self.padding is None else self.padding
    x = Conv(self.features, (self.kernel_size, self.kernel_size), self.strides, padding=padding,
             kernel_dilation=self.dilation, feature_group_count=self.groups, use_bias=False, kernel_init=self.kernel_init,
             dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="bn")(x)
    return x if self.activation is None else self.activation(x)
