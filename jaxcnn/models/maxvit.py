"""MaxViT (Tu et al. 2022, "MaxViT: Multi-Axis Vision Transformer"), laid out as timm's
`maxvit_*_tf` models (`timm/models/maxxvit.py`, the port of google-research/maxvit).

Stem: 3x3/2 conv (+bias), BN, GELU, 3x3 conv (+bias). Four stages of MaxViT
blocks; the first block of each stage halves the resolution. A block is
* MBConv: BN, 1x1 expand (4x the output width), BN-GELU, depthwise 3x3
  (stride), BN-GELU, squeeze-excitation (SiLU, output width / 4 hidden),
  1x1 project (+bias), plus the shortcut (2x2 average pool and a 1x1 conv
  where the shape changes);
* block attention: LN, self-attention inside non-overlapping P x P windows,
  LN, MLP (local);
* grid attention: LN, self-attention among the G x G pixels that sit on a
  regular grid spread over the whole map (dilated, global), LN, MLP.
Attention uses 32-wide heads and a learned relative position bias per head
(MaxViT's TF layout: a [heads, 2P-1, 2P-1] table indexed by key minus query
offsets). The head: global average pool, LayerNorm, Dense-tanh pre-logits,
Dense. GELU is the tanh approximation, as in the TF models; BN eps 1e-3, LN
eps 1e-5. Convolutions use TF "SAME" padding (asymmetric for stride 2).

The window and grid size P = G is `window_size`, by default the input size
/ 32 (7 at 224x224), as timm. Registered: `maxvit_tiny` / `maxvit_small` /
`maxvit_base` with timm's parameter counts at 224x224 and 1000 classes
(30,916,528 / 68,927,956 / 119,467,708 for `maxvit_{tiny,small,base}_tf_224`),
and `maxvit_cifar`: a stride-1 stem, three stages of widths 64/128/256 (two
blocks each) at 16x16, 8x8 and 4x4, windows and grids of 4.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, DropPath, LayerNorm
from jaxcnn.layers.attention import MultiHeadSelfAttention
from jaxcnn.layers.channel_attention import SqueezeExcitation
from jaxcnn.registry import register_model

ModuleDef = Callable[..., nn.Module]

BN_EPS = 1e-3
LN_EPS = 1e-5
gelu = functools.partial(nn.gelu, approximate=True)
# timm's 'vit_eff' init: efficientnet-like convolutions, ViT-like (xavier) dense layers.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.xavier_uniform()


def window_partition(x, size: int):
  """[B, H, W, C] -> [B * H/size * W/size, size * size, C]: non-overlapping size x size windows."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, size * size, c)


def window_reverse(windows, size: int, height: int, width: int):
  """Inverse of `window_partition`."""
  c = windows.shape[-1]
  x = windows.reshape(-1, height // size, width // size, size, size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, height, width, c)


def grid_partition(x, size: int):
  """[B, H, W, C] -> [B * H/size * W/size, size * size, C]: each group is a size x size grid
  of pixels H/size apart (rows) and W/size apart (columns), spanning the whole map."""
  b, h, w, c = x.shape
  x = x.reshape(b, size, h // size, size, w // size, c).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(-1, size * size, c)


def grid_reverse(groups, size: int, height: int, width: int):
  """Inverse of `grid_partition`."""
  c = groups.shape[-1]
  x = groups.reshape(-1, height // size, width // size, size, size, c).transpose(0, 3, 1, 4, 2, 5)
  return x.reshape(-1, height, width, c)


def relative_position_index(size: int) -> np.ndarray:
  """[N, N, 2] indices into a (2size-1, 2size-1) table: key minus query offsets, shifted to >= 0.

  Tokens are numbered row-major in a size x size window (N = size^2).
  """
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  coords = np.stack([rows.ravel(), cols.ravel()], axis=-1)      # [N, 2]
  return coords[None, :, :] - coords[:, None, :] + (size - 1)   # [query, key, 2]


class RelativePositionBias(nn.Module):
  """The [heads, N, N] attention logit bias of a size x size window from a learned
  [heads, 2size-1, 2size-1] table (timm `RelPosBiasTf`, std 0.02 init)."""
  size: int
  num_heads: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    table = self.param("relative_position_bias_table", nn.initializers.normal(0.02),
                       (self.num_heads, 2 * self.size - 1, 2 * self.size - 1), self.param_dtype)
    index = relative_position_index(self.size)
    return table[:, index[..., 0], index[..., 1]]


class MBConv(nn.Module):
  """Pre-norm inverted bottleneck with SE (see the module docstring); output `features` channels."""
  features: int
  conv: ModuleDef   # the model's Conv constructor (no bias, "SAME" padding)
  norm: ModuleDef   # the model's BatchNorm constructor (train/eval, eps, axis name)
  strides: int = 1
  expand_ratio: float = 4.0
  se_ratio: float = 0.25
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    mid = int(self.features * self.expand_ratio)
    shortcut = x
    if self.strides > 1:
      shortcut = nn.avg_pool(x, (self.strides, self.strides), (self.strides, self.strides))
    if shortcut.shape[-1] != self.features:
      shortcut = self.conv(self.features, (1, 1), use_bias=True, name="shortcut_expand")(shortcut)
    elif self.strides == 1 and x.shape[-1] != self.features:
      raise UserError("MBConv changes the width only together with a stride")

    y = self.norm(name="pre_norm")(x)
    y = gelu(self.norm(name="norm1")(self.conv(mid, (1, 1), name="conv1_1x1")(y)))
    y = self.conv(mid, (3, 3), self.strides, feature_group_count=mid, name="conv2_kxk")(y)
    y = gelu(self.norm(name="norm2")(y))
    y = SqueezeExcitation(rd_channels=int(self.se_ratio * self.features), activation=nn.silu,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="se")(y)
    y = self.conv(self.features, (1, 1), use_bias=True, name="conv3_1x1")(y)
    return DropPath(self.drop_path_rate)(y, deterministic=not train) + shortcut


class PartitionAttention(nn.Module):
  """x + attn(partition(LN(x))), then x + MLP(LN(x)); partition 'block' (windows) or 'grid'."""
  partition: str
  size: int
  dim_head: int = 32
  mlp_ratio: float = 4.0
  dropout: float = 0.0            # after the attention projection and in the MLP (timm proj_drop)
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    _, height, width, dim = x.shape
    heads = dim // self.dim_head
    norm = lambda name: LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    dense = lambda features, name: nn.Dense(features, kernel_init=dense_init, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    split, merge = (window_partition, window_reverse) if self.partition == "block" \
        else (grid_partition, grid_reverse)

    y = split(norm("norm1")(x), self.size)
    bias = RelativePositionBias(self.size, heads, self.param_dtype, name="rel_pos")()
    y = MultiHeadSelfAttention(num_heads=heads, dropout_rate=self.attention_dropout, kernel_init=dense_init,
                               dtype=self.dtype, param_dtype=self.param_dtype, name="attn")(y, bias, train)
    y = nn.Dropout(self.dropout)(merge(y, self.size, height, width), deterministic=not train)
    x = x + DropPath(self.drop_path_rate)(y, deterministic=not train)

    y = gelu(dense(int(dim * self.mlp_ratio), "fc1")(norm("norm2")(x)))
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = nn.Dropout(self.dropout)(dense(dim, "fc2")(y), deterministic=not train)
    return x + DropPath(self.drop_path_rate)(y, deterministic=not train)


class MaxViTBlock(nn.Module):
  """MBConv ('conv'), block attention ('attn_block'), grid attention ('attn_grid')."""
  features: int
  strides: int
  size: int
  dim_head: int
  drop_path_rate: float
  conv: ModuleDef
  norm: ModuleDef
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = MBConv(self.features, self.conv, self.norm, self.strides, drop_path_rate=self.drop_path_rate,
               dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x, train)
    attention = functools.partial(PartitionAttention, size=self.size, dim_head=self.dim_head,
                                  dropout=self.dropout, attention_dropout=self.attention_dropout,
                                  drop_path_rate=self.drop_path_rate, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
    x = attention("block", name="attn_block")(x, train)
    return attention("grid", name="attn_grid")(x, train)


class MaxViT(nn.Module):
  """MaxViT classifier on NHWC images; logits [B, num_classes]."""
  num_classes: int = 1000
  embed_dim: Sequence[int] = (64, 128, 256, 512)
  depths: Sequence[int] = (2, 2, 5, 2)
  stem_width: int = 64
  stem_stride: int = 2
  head_hidden_size: Optional[int] = None   # None: the last stage's width
  window_size: Optional[int] = None        # window = grid size; None: input size // 32
  dim_head: int = 32
  dropout: float = 0.0                     # before the classifier (timm drop_rate)
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0              # of the last block; linear from 0 over all blocks
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if len(self.embed_dim) != len(self.depths) or not self.depths or min(self.depths) < 1:
      raise UserError(f"MaxViT embed_dim={tuple(self.embed_dim)} and depths={tuple(self.depths)} "
                      "must have one positive depth per stage width")
    bad = [d for d in self.embed_dim if d % self.dim_head or d < self.dim_head]
    if bad:
      raise UserError(f"MaxViT stage widths {bad} are not multiples of dim_head={self.dim_head}")
    if self.stem_stride not in (1, 2):
      raise UserError(f"MaxViT stem_stride={self.stem_stride} must be 1 or 2")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise UserError(f"MaxViT drop_path_rate={self.drop_path_rate} must be in [0, 1)")
    super().__post_init__()

  def _partition_size(self, shape) -> int:
    """The window / grid size, checked against every stage's feature map."""
    height, width = shape[1:3]
    size = self.window_size or height // 32
    stride = self.stem_stride * 2 ** len(self.depths)
    if size < 1 or height % stride or width % stride or (height // stride) % size or (width // stride) % size:
      raise UserError(f"MaxViT input {height}x{width} does not fit: every stage's map (the last is "
                      f"{height // stride}x{width // stride}) must be divisible into window/grid size {size}; "
                      "use an input that is a multiple of the total stride times the window size, or set window_size")
    return size

  @nn.compact
  def __call__(self, x, train: bool = False):
    size = self._partition_size(x.shape)
    conv = functools.partial(Conv, use_bias=False, padding="SAME", kernel_init=conv_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=BN_EPS,
                             axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_width, (3, 3), self.stem_stride, use_bias=True, name="stem_conv1")(x)
    x = gelu(norm(name="stem_norm1")(x))
    x = conv(self.stem_width, (3, 3), use_bias=True, name="stem_conv2")(x)

    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    index = 0
    for stage, (features, depth) in enumerate(zip(self.embed_dim, self.depths)):
      for block in range(depth):
        x = MaxViTBlock(features, 2 if block == 0 else 1, size, self.dim_head, rates[index], conv, norm,
                        attention_dropout=self.attention_dropout, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"stages_{stage}_{block}")(x, train)
        index += 1

    x = jnp.mean(x, axis=(1, 2))
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="head_norm")(x)
    hidden = self.head_hidden_size or self.embed_dim[-1]
    x = jnp.tanh(nn.Dense(hidden, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="head_pre_logits")(x))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(x)


def _register():
  register_model("maxvit", num_classes=1000)(MaxViT)
  register_model("maxvit_tiny", embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), num_classes=1000)(MaxViT)
  register_model("maxvit_small", embed_dim=(96, 192, 384, 768), depths=(2, 2, 5, 2), num_classes=1000)(MaxViT)
  register_model("maxvit_base", embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), num_classes=1000)(MaxViT)
  register_model("maxvit_cifar", embed_dim=(64, 128, 256), depths=(2, 2, 2), stem_stride=1, window_size=4,
                 num_classes=10)(MaxViT)


_register()
