"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), laid out as torchvision's.

A 4x4/4 patchify conv + LayerNorm stem, four stages of ConvNeXt blocks with
LayerNorm + 2x2/2 conv downsampling between them, then global average
pooling, LayerNorm and the classifier. A block is

    x + DropPath(gamma * pwconv2(GELU(pwconv1(LN(dwconv7x7(x))))))

(a depthwise 7x7 conv, an inverted bottleneck 4x wide done by linear layers
on the channel axis, a learnable per-channel layer scale gamma initialised to
1e-6). LayerNorms use eps 1e-6, GELU is the exact (erf) one, as in torch.
The stochastic depth rate grows linearly from 0 at the first block to
`drop_path_rate` at the last (torchvision: tiny 0.1, small 0.4, base and
large 0.5); the masks use the 'drop_path' rng.

Registered (parameter counts at 1000 classes, equal to torchvision's):
  convnext_tiny  depths 3-3-9-3,  dims 96-192-384-768     28,589,128
  convnext_small depths 3-3-27-3, dims 96-192-384-768     50,223,688
  convnext_base  depths 3-3-27-3, dims 128-256-512-1024   88,591,464
  convnext_large depths 3-3-27-3, dims 192-384-768-1536  197,767,336
`depths` and `dims` can be set for other sizes.

`patch_size` (default 4, the paper's) is the stem's kernel and stride. For
32x32 images a 4x4 patchify stem leaves a 1x1 last stage; `convnext_cifar`
(10 classes) is the CIFAR-10 ConvNeXt of filipbasara0/simple-convnext: a 1x1
stem (patch size 1: its README reports patch sizes 2 and 4 about 6 and 12
points worse), depths 2-2-2-2, dims 64-128-256-512, no stochastic depth;
6,378,378 parameters (the README's "6.4M"), last stage 4x4 at 32x32.

Input sizes: 8 * patch_size and up (three 2x downsamplings after the stem;
32x32 and up with the default 4).

Backbone use: `return_features=True` returns {'stem', 'stage1'..'stage4'}:
the normalised stem output (stride 4) and each stage's last block output
(strides 4, 8, 16, 32; with another `patch_size` p: p, p, 2p, 4p, 8p), before
any downsampling norm; no classifier is built.

Parameter names: `stem_conv`, `stem_norm`, `stage{s}_block{b}/{dwconv,norm,
pwconv1,pwconv2,layer_scale}`, `downsample{s}_norm` / `downsample{s}_conv`
(in front of stage s, s = 2..4), `classifier_norm`, `classifier`;
`jaxcnn.convert.convnext` maps torchvision's `features.*` / `classifier.*`.
Initialisation as torchvision: truncated normal (std 0.02) kernels, zero biases.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, DropPath, LayerNorm, gelu
from jaxcnn.layers.drop import check_rate
from jaxcnn.registry import register_model

kernel_init = nn.initializers.truncated_normal(0.02)


def _layer_norm(module, name):
  # jaxcnn's LayerNorm takes the variance of the centred values (two passes), as torch does; eps is small.
  return LayerNorm(epsilon=1e-6, dtype=module.dtype, param_dtype=module.param_dtype, name=name)


class ConvNeXtBlock(nn.Module):
  """dwconv7x7 - LN - Linear(4 dim) - GELU - Linear(dim) - layer scale - DropPath, plus the input."""
  drop_path_rate: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    dense = functools.partial(nn.Dense, kernel_init=kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    y = Conv(dim, (7, 7), padding=3, feature_group_count=dim, kernel_init=kernel_init,
             dtype=self.dtype, param_dtype=self.param_dtype, name="dwconv")(x)
    y = _layer_norm(self, "norm")(y)
    y = gelu(dense(4 * dim, name="pwconv1")(y))
    y = dense(dim, name="pwconv2")(y)
    gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (dim,), self.param_dtype)
    y = y * jnp.asarray(gamma, self.dtype)
    return x + DropPath(self.drop_path_rate)(y, deterministic=not train)


class ConvNeXt(nn.Module):
  """ConvNeXt with `depths[s]` blocks of width `dims[s]` in stage s (see module doc)."""
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  patch_size: int = 4              # stem kernel = stride; 1 or 2 for 32x32 images
  drop_path_rate: float = 0.1
  layer_scale_init: float = 1e-6
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if len(self.depths) != len(self.dims) or not self.depths:
      raise UserError(f"depths={tuple(self.depths)} and dims={tuple(self.dims)} must be non-empty and "
                      "of the same length (one entry per stage)")
    if any(int(d) < 1 for d in self.depths) or any(int(d) < 1 for d in self.dims):
      raise UserError(f"depths={tuple(self.depths)} and dims={tuple(self.dims)} must be positive")
    if int(self.patch_size) < 1:
      raise UserError(f"patch_size={self.patch_size} must be a positive stem stride (4: the paper; 1 or 2: CIFAR)")
    check_rate("drop_path_rate", self.drop_path_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, kernel_init=kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
    p = int(self.patch_size)
    x = conv(self.dims[0], (p, p), p, padding="VALID", name="stem_conv")(x)
    x = _layer_norm(self, "stem_norm")(x)
    features = {"stem": x}
    total, index = sum(self.depths), 0
    for s, (depth, dim) in enumerate(zip(self.depths, self.dims), start=1):
      if s > 1:
        x = _layer_norm(self, f"downsample{s}_norm")(x)
        x = conv(dim, (2, 2), 2, padding="VALID", name=f"downsample{s}_conv")(x)
      for b in range(depth):
        # Linear in the block index: 0 for the first block, drop_path_rate for the last.
        rate = self.drop_path_rate * index / (total - 1) if total > 1 else 0.0
        x = ConvNeXtBlock(rate, self.layer_scale_init, self.dtype, self.param_dtype,
                          name=f"stage{s}_block{b}")(x, train)
        index += 1
      features[f"stage{s}"] = x
    if self.return_features:
      return features
    x = _layer_norm(self, "classifier_norm")(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="classifier")(x)


def _register():
  variants = {
      "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.1),
      "convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0.4),
      "convnext_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.5),
      "convnext_large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), drop_path_rate=0.5),
  }
  for name, kwargs in variants.items():
    register_model(name, **kwargs)(ConvNeXt)
  register_model("convnext_cifar", depths=(2, 2, 2, 2), dims=(64, 128, 256, 512), patch_size=1,
                 drop_path_rate=0.0, num_classes=10)(ConvNeXt)


_register()
