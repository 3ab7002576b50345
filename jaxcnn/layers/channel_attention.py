"""Channel attention: one gate per channel, computed from a global descriptor of the feature map.

* `SqueezeExcitation` (Hu et al. 2018): global average pool, FC-ReLU-FC-sigmoid.
* `EfficientChannelAttention` (ECA, Wang et al. 2020): global average pool,
  a 1D convolution across neighbouring channels (no dimensionality
  reduction), sigmoid; the kernel size follows the channel count.
* `ChannelAttention` (the channel module of CBAM, Woo et al. 2018): average-
  and max-pooled descriptors through one shared MLP, summed, sigmoid.
* `GlobalSecondOrderPooling` (GSoP, Gao et al. 2019): the gate comes from the
  covariance of a 1x1-reduced feature map (second-order statistics) by a
  row-wise convolution, a 1x1 convolution and a sigmoid.

Every block maps [B, H, W, C] -> [B, H, W, C] as x * gate with a gate of
shape [B, 1, 1, C] in (0, 1), and is called as `block(x, train=...)`.
Blocks with BatchNorm build it from `norm` when given (a constructor such
as a ResNet's `functools.partial(nn.BatchNorm, use_running_average=...)`,
which then also decides train/eval), else from `train` and `bn_axis_name`.

`jaxcnn.layers.attention_blocks.make_attention` builds any of them (and
CBAM) by name. Parameter names follow timm (`fc1`, `fc2`, `conv`) where timm
has the block, so its weights map by name.
"""
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers.conv import Conv

ModuleDef = Callable[..., nn.Module]


def reduced_channels(channels: int, ratio: float, divisor: int = 1) -> int:
  """`channels * ratio` rounded to a multiple of `divisor`, at least `divisor` (timm's
  `make_divisible(channels * ratio, divisor, round_limit=0)`, as its SE and CBAM use it)."""
  value = channels * ratio
  return max(divisor, int(value + divisor / 2) // divisor * divisor)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
  """ECA's adaptive kernel size k = |log2(C) / gamma + beta / gamma|_odd (Wang et al. 2020, eq. 12).

  |t|_odd is the odd number nearest to t from below: t truncated, plus one if even.
  """
  t = int(abs((math.log2(channels) + beta) / gamma))
  return t if t % 2 else t + 1


def batch_norm(module: nn.Module, train: bool, name: str, **kwargs) -> nn.Module:
  """The block's BatchNorm: `module.norm` when set, else torchvision-style BN from `train`."""
  if module.norm is not None:
    return module.norm(name=name, **kwargs)
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=module.bn_axis_name, dtype=module.dtype,
                      param_dtype=module.param_dtype, name=name, **kwargs)


def _global_average(x):
  """[B, H, W, C] -> [B, 1, 1, C], averaged in float32 (a bfloat16 sum over a big map loses bits)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)


class SqueezeExcitation(nn.Module):
  """x * sigmoid(fc2(act(fc1(mean_hw(x))))), the FCs as 1x1 convolutions with bias (timm `SEModule`).

  The hidden width is `rd_channels` when given, else `reduced_channels(C,
  rd_ratio, rd_divisor)`: timm's defaults (1/16, at least and a multiple of
  8) give SE-ResNet-50's 28,088,024 parameters.
  """
  rd_ratio: float = 1.0 / 16
  rd_divisor: int = 8
  rd_channels: Optional[int] = None
  activation: Callable = nn.relu
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    channels = x.shape[-1]
    hidden = self.rd_channels or reduced_channels(channels, self.rd_ratio, self.rd_divisor)
    conv = lambda features, name: Conv(features, (1, 1), dtype=self.dtype,
                                       param_dtype=self.param_dtype, name=name)
    gate = conv(channels, "fc2")(self.activation(conv(hidden, "fc1")(_global_average(x))))
    return x * nn.sigmoid(gate)


class EfficientChannelAttention(nn.Module):
  """ECA: x * sigmoid(conv1d_k(mean_hw(x))) with the 1D convolution running along the channels.

  Channel c's gate depends only on the k channels around it (zero padding at
  the ends); k is `kernel_size` when given, else `eca_kernel_size(C, gamma,
  beta)`. The only parameters are the k taps (`conv/kernel` [k, 1, 1]).
  """
  kernel_size: Optional[int] = None
  gamma: float = 2.0
  beta: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    k = self.kernel_size or eca_kernel_size(x.shape[-1], self.gamma, self.beta)
    if k < 1 or k % 2 == 0:
      raise UserError(f"ECA kernel_size={k} must be a positive odd number")
    pooled = _global_average(x).reshape(x.shape[0], x.shape[-1], 1)  # channels as the 1D axis
    gate = Conv(1, (k,), padding=((k - 1) // 2,), use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(pooled)
    return x * nn.sigmoid(gate).reshape(x.shape[0], 1, 1, x.shape[-1])


class ChannelAttention(nn.Module):
  """CBAM's channel module: x * sigmoid(MLP(avg_hw(x)) + MLP(max_hw(x))), one MLP for both.

  The MLP is fc1-ReLU-fc2 as 1x1 convolutions. `mlp_bias=True` is the CBAM
  authors' code (CBAM-ResNet-50: 28.09M parameters, their Table 3); timm's
  `CbamModule` has no MLP bias (28.07M).
  """
  rd_ratio: float = 1.0 / 16
  rd_divisor: int = 1
  rd_channels: Optional[int] = None
  mlp_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    channels = x.shape[-1]
    hidden = self.rd_channels or reduced_channels(channels, self.rd_ratio, self.rd_divisor)
    conv = lambda features, name: Conv(features, (1, 1), use_bias=self.mlp_bias, dtype=self.dtype,
                                       param_dtype=self.param_dtype, name=name)
    # Both descriptors side by side as a 1x2 "image": one pass through the shared MLP.
    pooled = jnp.concatenate([_global_average(x), jnp.max(x, axis=(1, 2), keepdims=True)], axis=2)
    scores = conv(channels, "fc2")(nn.relu(conv(hidden, "fc1")(pooled)))
    return x * nn.sigmoid(jnp.sum(scores, axis=2, keepdims=True))


def channel_covariance(x):
  """[B, H, W, C] -> [B, C, C]: the covariance of the channels over the H*W positions.

  Normalised by H*W (GSoP's covariance pooling, `X (I - 11^T / M) X^T / M`),
  computed in float32.
  """
  batch, height, width, channels = x.shape
  x = x.astype(jnp.float32).reshape(batch, height * width, channels)
  x = x - jnp.mean(x, axis=1, keepdims=True)
  return jnp.einsum("bmi,bmj->bij", x, x) / (height * width)


class GlobalSecondOrderPooling(nn.Module):
  """GSoP channel attention (Gao et al. 2019, "GSoP-Net1" block), as in the authors' code.

  relu(x) -> 1x1 conv to `reduced_channels` (+bias) -> BN -> ReLU ->
  d x d channel covariance -> BN over its rows -> row-wise convolution (a
  d-group convolution with a d x 1 kernel, 4 outputs per row) -> 1x1 conv
  to C (+bias) -> sigmoid: the gate, multiplied into x.

  `reduce_strides` strides the reduction conv (the authors use 2 in
  ResNet-50's first stage to save compute). The gate depends on the
  positions only through the covariance, so permuting positions leaves it
  unchanged (with `reduce_strides=1`).
  """
  reduced_channels: int = 128
  reduce_strides: int = 1
  norm: Optional[ModuleDef] = None
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = self.reduced_channels
    conv = lambda *args, **kwargs: Conv(*args, dtype=self.dtype, param_dtype=self.param_dtype, **kwargs)
    y = conv(d, (1, 1), self.reduce_strides, name="reduce")(nn.relu(x))
    y = nn.relu(batch_norm(self, train, "reduce_bn")(y))
    # [B, d, d] -> [B, d, 1, d]: the last axis indexes the covariance rows (torch's channel
    # axis there); the covariance is symmetric, so no transpose is needed.
    cov = channel_covariance(y).astype(y.dtype)[:, :, None, :]
    cov = batch_norm(self, train, "row_bn")(cov)
    rows = conv(4 * d, (d, 1), padding="VALID", feature_group_count=d, name="row_conv")(cov)
    gate = conv(x.shape[-1], (1, 1), name="expand")(rows)  # [B, 1, 1, C]
    return x * nn.sigmoid(gate)
