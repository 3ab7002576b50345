"""`make_attention(kind, channels, ...)`: the attention blocks a CNN can take by name.

The names are timm's (`create_model('resnet50', attn='se')` there and here):
  'se'   SqueezeExcitation          'eca'  EfficientChannelAttention
  'cbam' CBAM (channel + spatial)   'gsop' GlobalSecondOrderPooling
A CNN block applies the returned module to its residual branch just before
the residual addition: `y = block(y, train=train)`.
"""
from typing import Optional

import flax.linen as nn

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers.channel_attention import (EfficientChannelAttention, GlobalSecondOrderPooling,
                                             SqueezeExcitation, eca_kernel_size, reduced_channels)
from jaxcnn.layers.spatial_attention import CBAM

ATTENTION_BLOCKS = {
    "se": SqueezeExcitation,
    "eca": EfficientChannelAttention,
    "cbam": CBAM,
    "gsop": GlobalSecondOrderPooling,
}
_WITHOUT_BN = (SqueezeExcitation, EfficientChannelAttention)


def make_attention(kind: Optional[str], channels: Optional[int] = None, **kwargs) -> Optional[nn.Module]:
  """The attention block called `kind` ('se' | 'eca' | 'cbam' | 'gsop'); None or 'none' gives None.

  `channels`, when given, fixes at construction what depends on the width
  (the SE hidden width, the ECA kernel size), so it can be read off the
  module; without it the blocks work it out from their input. Other keyword
  arguments go to the block: `name`, `dtype`, `param_dtype`, `norm` (a
  BatchNorm constructor), `bn_axis_name`, block options such as `rd_ratio`.
  `norm` and `bn_axis_name` are dropped for the blocks without BatchNorm, so
  one call site serves every name.
  """
  if kind is None or kind == "none":
    return None
  if kind not in ATTENTION_BLOCKS:
    raise unknown("attention block", kind, list(ATTENTION_BLOCKS) + ["none"])
  if channels is not None and channels < 1:
    raise UserError(f"attention block '{kind}' needs channels >= 1, got {channels}")
  block = ATTENTION_BLOCKS[kind]
  if block in _WITHOUT_BN:
    kwargs.pop("norm", None)
    kwargs.pop("bn_axis_name", None)
  if channels is not None and block is SqueezeExcitation and not kwargs.get("rd_channels"):
    kwargs["rd_channels"] = reduced_channels(channels, kwargs.get("rd_ratio", block.rd_ratio),
                                             kwargs.get("rd_divisor", block.rd_divisor))
  if channels is not None and block is EfficientChannelAttention and not kwargs.get("kernel_size"):
    kwargs["kernel_size"] = eca_kernel_size(channels, kwargs.get("gamma", block.gamma),
                                            kwargs.get("beta", block.beta))
  return block(**kwargs)
