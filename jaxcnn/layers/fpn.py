"""Feature Pyramid Network (Lin et al. 2017) as torchvision.ops.FeaturePyramidNetwork, NHWC.

`FeaturePyramidNetwork(out_channels, norm, extra_blocks)(features, train)` takes the
backbone maps lowest level (highest resolution) first and returns the pyramid in
the same order, followed by the extra levels:
  inner_blocks_i   1x1 conv (lateral) to `out_channels`
  layer_blocks_i   3x3 conv on the merged map
  top-down         last_inner = inner(C_i) + nearest(last_inner, size of inner(C_i)),
                   torch's `F.interpolate(mode='nearest', size=...)`: source index
                   floor(dst * (in / out)) in float32, so odd sizes map as in torch
  extra_blocks     `LastLevelMaxPool` ('pool': P_last[::2, ::2], torch's max_pool2d(1, 2))
                   or `LastLevelP6P7` (RetinaNet/FCOS: P6 = 3x3/2 conv, P7 = 3x3/2 conv of
                   ReLU(P6); from P5 when `use_p5`, else from C5, torchvision's
                   `use_P5 = in_channels == out_channels` rule)
`norm` (torchvision's `norm_layer`): None (convs with bias), 'batch' or 'group' (32
groups); with a norm the convs have no bias, as `Conv2dNormActivation`. Each block is
named `<kind>_<i>` with children `conv` (and `norm`), torchvision's `<kind>.<i>.0` / `.1`.
Initialisation as torchvision: kaiming_uniform(a=1) = uniform(+-sqrt(3 / fan_in)), zero bias.
"""
from typing import Any, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers.conv import Conv

FPN_NORMS = (None, "batch", "group")
# torch.nn.init.kaiming_uniform_(w, a=1): gain 1, bound sqrt(3 / fan_in).
fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's nearest source index per output pixel: floor(dst * float32(in / out))."""
  scale = np.float32(in_size) / np.float32(out_size)
  return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def upsample_nearest(x: jax.Array, size) -> jax.Array:
  """[B, h, w, C] -> [B, size[0], size[1], C] as `F.interpolate(x, size=size, mode='nearest')`."""
  h, w = int(size[0]), int(size[1])
  if x.shape[1:3] == (h, w):
    return x
  rows, cols = nearest_indices(x.shape[1], h), nearest_indices(x.shape[2], w)
  return x[:, rows][:, :, cols]


def make_norm(kind: Optional[str], train: bool, dtype, param_dtype, axis_name=None, name: str = "norm"):
  """A BatchNorm (torch defaults) or GroupNorm(32) named `name`; None for no norm."""
  if kind is None:
    return None
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name,
                        dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                        name=name)
  raise UserError(f"norm={kind!r} is not supported (allowed: None, 'batch', 'group')")


class ConvNorm(nn.Module):
  """kxk conv ('same' padding) with a bias unless a norm follows, then the optional norm (no activation)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  norm: Optional[str] = None
  use_bias: Optional[bool] = None         # None: a bias only without a norm (torchvision's Conv2dNormActivation)
  kernel_init: Any = fpn_init
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    x = Conv(self.features, (k, k), self.strides, padding=(k - 1) // 2,
             use_bias=self.norm is None if self.use_bias is None else self.use_bias,
             kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    norm = make_norm(self.norm, train, self.dtype, self.param_dtype, self.bn_axis_name)
    return x if norm is None else norm(x)


class LastLevelMaxPool(nn.Module):
  """torchvision's LastLevelMaxPool: one more level, the last pyramid map subsampled by 2 ('pool')."""

  def __call__(self, results: List[jax.Array], features: List[jax.Array]) -> List[jax.Array]:
    del features
    return [results[-1][:, ::2, ::2]]


class LastLevelP6P7(nn.Module):
  """torchvision's LastLevelP6P7: P6 = conv3x3/2(P5 or C5), P7 = conv3x3/2(ReLU(P6)); both with bias."""
  out_channels: int = 256
  use_p5: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, results: List[jax.Array], features: List[jax.Array]) -> List[jax.Array]:
    conv = lambda name: Conv(self.out_channels, (3, 3), 2, padding=1, kernel_init=fpn_init, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)
    p6 = conv("p6")(results[-1] if self.use_p5 else features[-1])
    return [p6, conv("p7")(nn.relu(p6))]


class FeaturePyramidNetwork(nn.Module):
  """FPN over backbone maps (lowest level first); see the module docstring."""
  out_channels: int = 256
  norm: Optional[str] = None
  extra_blocks: Optional[nn.Module] = None
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.norm not in FPN_NORMS:
      raise UserError(f"FPN norm={self.norm!r} is not supported (allowed: None, 'batch', 'group')")
    if self.out_channels < 1 or (self.norm == "group" and self.out_channels % 32):
      raise UserError(f"FPN out_channels={self.out_channels} must be >= 1 (a multiple of 32 with norm='group')")
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> List[jax.Array]:
    features = list(features)
    if not features:
      raise UserError("FeaturePyramidNetwork needs at least one feature map")
    block = lambda k, name: ConvNorm(self.out_channels, k, norm=self.norm, bn_axis_name=self.bn_axis_name,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    last = len(features) - 1
    last_inner = block(1, f"inner_blocks_{last}")(features[last], train)
    results = [block(3, f"layer_blocks_{last}")(last_inner, train)]
    for i in range(last - 1, -1, -1):
      lateral = block(1, f"inner_blocks_{i}")(features[i], train)
      last_inner = lateral + upsample_nearest(last_inner, lateral.shape[1:3]).astype(lateral.dtype)
      results.insert(0, block(3, f"layer_blocks_{i}")(last_inner, train))
    if self.extra_blocks is not None:
      results = results + list(self.extra_blocks(results, features))
    return results
