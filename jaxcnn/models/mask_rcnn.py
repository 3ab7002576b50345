"""Mask R-CNN (He et al. 2017) as torchvision builds it: the mask branch's modules.

  MaskRCNNHeads      `len(layers)` 3x3 convs (with bias, `dilation`) each followed by ReLU, on the
                     RoI-aligned features [K, 14, 14, C]; torchvision's MaskRCNNHeads(256, (256,) * 4, 1)
                     with norm_layer=None. Submodules conv_i = torchvision's mask_head.i.0.
  MaskRCNNPredictor  conv5_mask (2x2 transposed conv, stride 2) + ReLU + mask_fcn_logits (1x1 conv to
                     num_classes): [K, 14, 14, C] -> mask logits [K, 28, 28, num_classes] (NHWC per RoI).
Initialisation as torchvision: kaiming_normal_(mode='fan_out', relu) kernels, zero biases.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import Conv, ConvTranspose

mask_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_(fan_out, relu)


class MaskRCNNHeads(nn.Module):
  layers: Sequence[int] = (256, 256, 256, 256)
  dilation: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = int(self.dilation)
    for i, features in enumerate(self.layers):
      x = Conv(features, (3, 3), padding=d, kernel_dilation=d, kernel_init=mask_init, dtype=self.dtype,
               param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      x = nn.relu(x)
    return x


class MaskRCNNPredictor(nn.Module):
  num_classes: int
  dim_reduced: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ConvTranspose(self.dim_reduced, (2, 2), strides=(2, 2), padding="VALID", kernel_init=mask_init,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="conv5_mask")(x)
    x = nn.relu(x)
    return Conv(self.num_classes, (1, 1), kernel_init=mask_init, dtype=self.dtype, param_dtype=self.param_dtype,
                name="mask_fcn_logits")(x)
