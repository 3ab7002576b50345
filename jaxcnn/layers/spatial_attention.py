"""Spatial attention: one gate per position, shared by all channels.

* `SpatialAttention`: CBAM's spatial module (Woo et al. 2018): channel-wise
  max and mean maps, a 7x7 convolution + BN, sigmoid.
* `CBAM`: channel attention, then spatial attention.
* `AttentionGate`: the additive attention gate of Attention U-Net (Oktay et
  al. 2018): skip features x are weighted per position by
  alpha = sigmoid(psi(relu(theta(x) + phi(g)))), with g a (usually coarser)
  gating signal from the decoder.

Blocks with BatchNorm take `norm` / `bn_axis_name` as in `channel_attention`.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers.channel_attention import ChannelAttention, batch_norm
from jaxcnn.layers.conv import Conv

ModuleDef = Callable[..., nn.Module]


class SpatialAttention(nn.Module):
  """x * sigmoid(BN(conv_kxk([max_c(x), mean_c(x)]))): a [B, H, W, 1] gate, constant over channels.

  The pooled maps are stacked max first, as in the CBAM authors' code; the
  convolution has no bias (it is followed by BN): 2 k^2 + 2 parameters.
  """
  kernel_size: int = 7
  norm: Optional[ModuleDef] = None
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    if k < 1 or k % 2 == 0:
      raise UserError(f"spatial attention kernel_size={k} must be a positive odd number")
    pooled = jnp.concatenate([jnp.max(x, axis=-1, keepdims=True),
                              jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
    score = Conv(1, (k, k), padding=(k - 1) // 2, use_bias=False, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="conv")(pooled)
    score = batch_norm(self, train, "bn")(score)
    return x * nn.sigmoid(score)


class CBAM(nn.Module):
  """Convolutional Block Attention Module: `ChannelAttention` ('channel') then `SpatialAttention` ('spatial')."""
  rd_ratio: float = 1.0 / 16
  rd_divisor: int = 1
  rd_channels: Optional[int] = None
  mlp_bias: bool = True
  kernel_size: int = 7
  norm: Optional[ModuleDef] = None
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ChannelAttention(self.rd_ratio, self.rd_divisor, self.rd_channels, self.mlp_bias,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="channel")(x)
    return SpatialAttention(self.kernel_size, self.norm, self.bn_axis_name, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="spatial")(x, train=train)


def _resize_spatial(x, height: int, width: int):
  """Bilinear resize of a [B, h, w, C] map to [B, height, width, C] (identity when equal).

  Half-pixel centres, as torch's `interpolate(mode='bilinear', align_corners=False)` when upsampling.
  """
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="bilinear")


class AttentionGate(nn.Module):
  """Attention U-Net's additive attention gate; returns (gated features, alpha).

  x [B, H, W, C] (skip connection) and g [B, Hg, Wg, Cg] (gating signal):
    theta = conv_sxs/s(x)          (no bias; s = `subsample`, 1 for a 1x1 conv)
    phi   = conv_1x1(g) + bias, resized bilinearly to theta's grid
    alpha = sigmoid(conv_1x1(relu(theta + phi)) + bias), resized to H x W: [B, H, W, 1]
    y     = alpha * x,  then (`output_projection`) a 1x1 conv + BN as the authors' `W`.
  `inter_channels` defaults to C // 2 (at least 1), as in the authors' code.
  With `output_projection=False` the output is exactly alpha * x: zero
  wherever the gate is zero, x wherever it is one.
  """
  inter_channels: Optional[int] = None
  subsample: int = 1
  output_projection: bool = True
  norm: Optional[ModuleDef] = None
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, g, train: bool = False):
    if x.ndim != 4 or g.ndim != 4 or x.shape[0] != g.shape[0]:
      raise UserError(f"attention gate needs NHWC x and g with one batch size, got {x.shape} and {g.shape}")
    s = self.subsample
    if s < 1 or x.shape[1] % s or x.shape[2] % s:
      raise UserError(f"attention gate subsample={s} must be >= 1 and divide the input size {x.shape[1:3]}")
    channels = x.shape[-1]
    inter = self.inter_channels or max(1, channels // 2)
    conv = lambda *args, **kwargs: Conv(*args, dtype=self.dtype, param_dtype=self.param_dtype, **kwargs)

    theta = conv(inter, (s, s), s, padding="VALID", use_bias=False, name="theta")(x)
    phi = _resize_spatial(conv(inter, (1, 1), name="phi")(g), *theta.shape[1:3])
    score = conv(1, (1, 1), name="psi")(nn.relu(theta + phi))
    alpha = _resize_spatial(nn.sigmoid(score), *x.shape[1:3])
    y = alpha * x
    if self.output_projection:
      y = batch_norm(self, train, "out_bn")(conv(channels, (1, 1), name="out_conv")(y))
    return y, alpha
