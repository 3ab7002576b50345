"""U-Net (Ronneberger, Fischer & Brox 2015) and Attention U-Net (Oktay et al. 2018).

Segmentation models (the `segmentation` task's contract): `model.apply(
variables, x, train)` with x [B, H, W, C] returns {'out': logits
[B, H', W', num_classes]}; `num_classes=1` is the binary (sigmoid) case.

U-Net (`unet`): a contracting path of `depth` + 1 levels (default 4 down,
4 up) with base * 2^l channels (64, 128, 256, 512, 1024), each level two 3x3
convolutions with ReLU, 2x2/2 max-pooling between levels; an expansive path
that at each level upsamples by a 2x2/2 up-convolution (a transposed
convolution halving the channels), concatenates the contracting path's
feature map of that level (skip first, then the upsampled map), and applies
two 3x3 convolutions with ReLU; a final 1x1 convolution to the classes.
Options:
  padding='same' (default, the common practice): padded 3x3 convolutions,
    the output has the input's size; H and W must be divisible by 2^depth
    (16).
  padding='valid' (the paper): unpadded convolutions; each skip map is
    cropped at its centre to the upsampled map, and the output is smaller
    than the input: 572x572 -> 388x388 as in the paper's Fig. 1, in general
    H - 184 at depth 4, covering the input's centre (92 pixels off each
    border; the paper tiles large images with this overlap). H and W must be
    188 + 16k at depth 4 (every pooled map even); the error names the rule
    for other depths.
  batch_norm=True: conv-BN-ReLU (the convolutions then have no bias), which
    the paper predates but most re-implementations add.
  base (64), depth (4), drop_rate: dropout at the end of the contracting
    path (the paper's sec. 3.1), 0 by default.
Initialisation as the paper's sec. 3: Gaussian with std sqrt(2 / N), N the
fan-in (He et al.; flax's `variance_scaling`, truncated at two standard
deviations), zero biases.
Parameter count, 3 input channels, 2 classes, no BN: 31,031,810 (with one
input channel, the paper's grayscale images: 31,030,658; the paper states
no count, re-implementations quote "31.0M"); tests/models/test_unet.py
derives it from the layer list and from a PyTorch module built from it.

Attention U-Net (`attention_unet`): the same network with the additive
attention gate (`jaxcnn.layers.spatial_attention.AttentionGate`) on the skip
connections of levels 2..depth, as the authors' code (the full-resolution
level-1 skip is not gated): the skip map x is gated by the decoder signal g
one level coarser (the bottleneck for the deepest gate, else the previous
decoder level's output) before it is concatenated; theta is a 2x2/2
convolution that brings x to g's grid (the authors' sub-sample factor 2),
inter channels C/2, and the gate's 1x1 output projection with BN. Batch
norm is on by default (the authors' code). The up-convolutions stay the
U-Net's 2x2 transposed convolutions, where the authors' code upsamples
trilinearly and convolves; deep supervision (the authors' variant) is not
included.

Variable names: `enc{l}`/`dec{l}` with `conv1`, `conv2` (`bn1`, `bn2`),
`up{l}` (the up-convolution), `gate{l}` (attention), `classifier`.
"""
import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, ConvTranspose, max_pool
from jaxcnn.layers.spatial_attention import AttentionGate
from jaxcnn.registry import register_model

# The paper's sec. 3: N(0, 2 / fan_in).
he_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def valid_output_size(size: int, depth: int = 4) -> Optional[int]:
  """The output length of a padding='valid' U-Net for an input of length `size`; None if it does not fit."""
  for _ in range(depth):
    size -= 4
    if size <= 0 or size % 2:
      return None
    size //= 2
  size -= 4
  for _ in range(depth):
    if size < 1:
      return None
    size = 2 * size - 4
  return size if size >= 1 else None


def smallest_valid_size(depth: int = 4) -> int:
  """The smallest input length of a padding='valid' U-Net; the others are it plus multiples of 2^depth."""
  size = 1
  while valid_output_size(size, depth) is None:
    size += 1
  return size


def _center_crop(x, size):
  top, left = (x.shape[1] - size[0]) // 2, (x.shape[2] - size[1]) // 2
  return x[:, top:top + size[0], left:left + size[1]]


class DoubleConv(nn.Module):
  """Two 3x3 convolutions, each followed by ReLU (with `batch_norm`: conv-BN-ReLU, no conv bias)."""
  features: int
  padding: int
  batch_norm: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in (1, 2):
      x = Conv(self.features, (3, 3), padding=self.padding, use_bias=not self.batch_norm, kernel_init=he_init,
               dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{i}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.bn_axis_name,
                         dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net; `attention=True`: Attention U-Net (see module doc)."""
  num_classes: int = 2
  base: int = 64
  depth: int = 4
  padding: str = "same"
  batch_norm: bool = False
  attention: bool = False
  drop_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.padding not in ("same", "valid"):
      raise UserError(f"padding={self.padding!r} is not supported (allowed: 'same', 'valid')")
    if self.base < 1 or self.depth < 1 or self.num_classes < 1:
      raise UserError(f"base={self.base}, depth={self.depth} and num_classes={self.num_classes} must be >= 1")
    if not 0.0 <= self.drop_rate < 1.0:
      raise UserError(f"drop_rate={self.drop_rate} must be in [0, 1)")
    super().__post_init__()

  def _check_size(self, height: int, width: int):
    if self.padding == "same":
      step = 2 ** self.depth
      if height % step or width % step:
        raise UserError(f"U-Net (padding='same', depth {self.depth}) needs H and W divisible by {step}, "
                        f"got {height}x{width}")
      return
    if valid_output_size(height, self.depth) is None or valid_output_size(width, self.depth) is None:
      first, step = smallest_valid_size(self.depth), 2 ** self.depth
      raise UserError(f"U-Net (padding='valid', depth {self.depth}) needs H and W equal to {first} + {step}k "
                      f"(k >= 0; e.g. {first + 24 * step if self.depth == 4 else first + step}), "
                      f"got {height}x{width}")

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
    self._check_size(*x.shape[1:3])
    block = functools.partial(DoubleConv, padding=1 if self.padding == "same" else 0, batch_norm=self.batch_norm,
                              dtype=self.dtype, param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    skips = []
    for level in range(1, self.depth + 2):
      x = block(self.base * 2 ** (level - 1), name=f"enc{level}")(x, train)
      if level <= self.depth:
        skips.append(x)
        x = max_pool(x, 2, 2)
    if self.drop_rate > 0:
      x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    for level in range(self.depth, 0, -1):
      width = self.base * 2 ** (level - 1)
      up = ConvTranspose(width, (2, 2), strides=(2, 2), padding="VALID", kernel_init=he_init, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"up{level}")(x)
      skip = _center_crop(skips[level - 1], up.shape[1:3])
      if self.attention and level >= 2:
        skip, _ = AttentionGate(subsample=2, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=f"gate{level}")(skip, x, train)
      x = block(width, name=f"dec{level}")(jnp.concatenate([skip, up], axis=-1), train)
    logits = Conv(self.num_classes, (1, 1), kernel_init=he_init, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="classifier")(x)
    return {"out": logits}


register_model("unet")(UNet)
register_model("attention_unet", attention=True, batch_norm=True)(UNet)
