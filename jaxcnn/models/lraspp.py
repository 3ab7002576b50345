"""Lite R-ASPP (Howard et al. 2019, "Searching for MobileNetV3") as torchvision's lraspp_mobilenet_v3_large.

A segmentation model (the contract of the `segmentation` task): `apply(variables,
x, train)` with x [B, H, W, C], any H and W, returns {'out': logits [B, H, W,
num_classes]} at the input size. There is no auxiliary head: `aux_loss=True`
is refused, as torchvision refuses it.

`backbone` is `mobilenet_v3_large` (`jaxcnn.models.mobilenet`) with
`return_features=True` and, at the default output stride 16, `dilated=True`
(its last stage at stride 16 with dilation 2); its variables are exactly the
classification model's minus `classifier`, so ImageNet weights load into
`backbone/` unchanged. The head (`classifier`, torchvision's `LRASPPHead`)
reads the backbone's 'high' map (960 channels, output stride 16) and 'low'
map (40 channels, output stride 8):
  cbr:   1x1 conv (no bias) to `inter_channels` (128), BN, ReLU on 'high'
  scale: global average of 'high', 1x1 conv (no bias) to 128, sigmoid
  the product resized bilinearly to 'low''s size, then
  high_classifier (1x1 conv with bias) of it + low_classifier (1x1 conv with
  bias) of 'low', resized bilinearly to the input
(`jaxcnn.layers.resize_bilinear`, torch's `F.interpolate(align_corners=False)`).
The paper's head average-pools 'high' with a large kernel and stride before the
gate; torchvision's (and so this) uses global pooling.

Parameters at 21 classes: 3,221,538, torchvision's (backbone 2,971,952 =
mobilenet_v3_large's 5,483,032 minus its 2,511,080-parameter classifier;
head 249,586). `output_stride=32` keeps the backbone undilated (no parameter
change); other values are refused. The head's BN uses torch's defaults (eps
1e-5, momentum 0.1); its convolutions start like torch's (uniform
+-1/sqrt(fan_in)) with zero biases. `jaxcnn.convert.torch_to_flax(
'lraspp_mobilenet_v3_large', state_dict)` converts torchvision's weights.
"""
import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, resize_bilinear
from jaxcnn.layers.conv_norm import ConvBNAct
from jaxcnn.registry import create_model, register_model

OUTPUT_STRIDES = (16, 32)

# torch's default convolution initialisation: uniform(+-1/sqrt(fan_in)).
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class LRASPPHead(nn.Module):
  """torchvision's `LRASPPHead` on {'low', 'high'} feature maps (see module doc)."""
  num_classes: int
  inter_channels: int = 128
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, low, high, train: bool = False):
    conv = functools.partial(Conv, kernel_size=(1, 1), kernel_init=torch_conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    x = ConvBNAct(self.inter_channels, 1, kernel_init=torch_conv_init, bn_axis_name=self.bn_axis_name,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="cbr")(high, train)
    gate = jnp.mean(high, axis=(1, 2), keepdims=True)
    gate = nn.sigmoid(conv(self.inter_channels, use_bias=False, name="scale")(gate))
    x = resize_bilinear(x * gate, low.shape[1:3])
    return (conv(self.num_classes, name="low_classifier")(low)
            + conv(self.num_classes, name="high_classifier")(x))


class LRASPP(nn.Module):
  """Lite R-ASPP on a MobileNetV3-Large backbone (see module doc)."""
  num_classes: int = 21
  output_stride: int = 16
  inter_channels: int = 128
  aux_loss: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.output_stride not in OUTPUT_STRIDES:
      raise UserError(f"output_stride={self.output_stride!r} is not supported by LR-ASPP's MobileNetV3 "
                      f"(allowed: {', '.join(map(str, OUTPUT_STRIDES))})")
    if self.aux_loss:
      raise UserError("aux_loss=True: LR-ASPP has no auxiliary head (allowed: aux_loss=False)")
    if self.num_classes < 1:
      raise UserError(f"num_classes={self.num_classes} must be >= 1")
    if self.inter_channels < 1:
      raise UserError(f"inter_channels={self.inter_channels} must be >= 1")
    super().__post_init__()

  def setup(self):
    norm = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    # Built in setup so the backbone is named by its attribute, `backbone`.
    self.backbone = create_model("mobilenet_v3_large", return_features=True, dilated=self.output_stride == 16,
                                 **norm)
    self.classifier = LRASPPHead(self.num_classes, self.inter_channels, **norm)

  def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
    features = self.backbone(x, train=train)
    logits = self.classifier(features["low"], features["high"], train)
    return {"out": resize_bilinear(logits, x.shape[1:3])}


register_model("lraspp_mobilenet_v3_large")(LRASPP)
