"""Temporal Adaptive Module (TAM, Liu et al. 2021, "TAM: Temporal Adaptive Module for Video Recognition").

For clips laid out [B, T, H, W, C]. Both branches read the spatially pooled
clip s [B, T, C]:

* local branch (location-sensitive importance): a temporal convolution over
  s (C -> C/4, kernel K, no bias), BN, ReLU, a 1x1 temporal convolution
  (C/4 -> C, no bias), sigmoid: a weight per (frame, channel), multiplied
  into the clip;
* global branch (location-invariant aggregation): for every channel its
  length-T descriptor goes through FC (T -> 2T, no bias), BN, ReLU, FC
  (2T -> K, no bias), softmax: an adaptive temporal kernel of K taps per
  sample and channel, which then convolves the reweighted clip along time
  (zero padding, stride 1).

As in the authors' code, out[t] = sum_k kernel[k] * (x * w)[t + k - K // 2].
The global FC acts on the time axis, so a module is built for one clip
length T (fixed at init). Intermediate values are sown into the
'intermediates' collection as `local_weights` [B, T, 1, 1, C] and `kernel`
[B, C, K] for inspection.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers.channel_attention import batch_norm
from jaxcnn.layers.conv import Conv

ModuleDef = Callable[..., nn.Module]


def adaptive_temporal_conv(x, kernel):
  """Per-sample, per-channel temporal convolution (cross-correlation, zero padding, same length).

  x [B, T, H, W, C], kernel [B, C, K] with K odd:
  out[b, t, h, w, c] = sum_k kernel[b, c, k] * x[b, t + k - K // 2, h, w, c].
  Written as K shifted, weighted copies of the clip: K is small (3) and the
  kernel differs per sample, which a convolution primitive would need
  B * C feature groups for.
  """
  taps = kernel.shape[-1]
  if taps % 2 == 0:
    raise UserError(f"the adaptive temporal kernel needs an odd number of taps, got {taps}")
  frames, half = x.shape[1], taps // 2
  padded = jnp.pad(x, ((0, 0), (half, half)) + ((0, 0),) * (x.ndim - 2))
  weights = kernel.astype(x.dtype)[:, None, None, None, :, :]  # [B, 1, 1, 1, C, K]
  return sum(padded[:, k:k + frames] * weights[..., k] for k in range(taps))


class TemporalAdaptiveModule(nn.Module):
  """TAM on [B, T, H, W, C] clips; output of the same shape (see the module docstring)."""
  kernel_size: int = 3
  local_reduction: int = 4   # the local branch's hidden width is C // local_reduction
  global_expansion: int = 2  # the global branch's hidden width is global_expansion * T
  norm: Optional[ModuleDef] = None
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 5:
      raise UserError(f"TAM expects clips [batch, time, height, width, channels], got shape {x.shape}")
    k = self.kernel_size
    if k < 1 or k % 2 == 0:
      raise UserError(f"TAM kernel_size={k} must be a positive odd number")
    frames, channels = x.shape[1], x.shape[-1]
    hidden = channels // self.local_reduction
    if hidden < 1:
      raise UserError(f"TAM needs at least {self.local_reduction} channels (C // local_reduction >= 1), got {channels}")
    pooled = jnp.mean(x.astype(jnp.float32), axis=(2, 3)).astype(x.dtype)  # [B, T, C]

    local = Conv(hidden, (k,), padding=((k // 2, k // 2),), use_bias=False, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="local_conv1")(pooled)
    local = nn.relu(batch_norm(self, train, "local_bn")(local))
    local = Conv(channels, (1,), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="local_conv2")(local)
    local_weights = nn.sigmoid(local)[:, :, None, None, :]  # [B, T, 1, 1, C]

    dense = lambda features, name: nn.Dense(features, use_bias=False, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    descriptor = jnp.swapaxes(pooled, 1, 2)  # [B, C, T]: one temporal descriptor per channel
    kernel = nn.relu(batch_norm(self, train, "global_bn")(
        dense(self.global_expansion * frames, "global_fc1")(descriptor)))
    kernel = nn.softmax(dense(k, "global_fc2")(kernel).astype(jnp.float32), axis=-1)  # [B, C, K]

    self.sow("intermediates", "local_weights", local_weights)
    self.sow("intermediates", "kernel", kernel)
    return adaptive_temporal_conv(x * local_weights, kernel)
