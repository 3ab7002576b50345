"""Conformer (Peng et al. 2021, "Conformer: Local Features Coupling Global Representations
for Visual Recognition"), laid out as the authors' `conformer.py` (pengzhiliang/Conformer).

Two branches run side by side from a shared stem:
* a CNN branch of ResNet-style bottlenecks (`ConvBlock`, BN eps 1e-6) in
  three stages of `base_channel * channel_ratio * (1, 2, 4)` channels;
* a transformer branch of pre-LN ViT blocks (no position embedding: the
  coupling with the CNN branch gives the tokens their positions) on patch
  tokens plus a class token.
In each of the `depth - 1` `ConvTransBlock`s, Feature Coupling Units join
them in both directions:
* FCUDown (CNN -> tokens): 1x1 conv to the token width, average pooling by
  the patch stride, LayerNorm, GELU; added to the tokens entering the block;
* FCUUp (tokens -> CNN): tokens reshaped to a grid, 1x1 conv to the
  bottleneck width, BN, ReLU, nearest upsampling; added into the 3x3 conv of
  the block's second bottleneck (`fusion_block`).
Two heads: average-pooled CNN features -> `conv_cls_head`, the final class
token (LayerNorm) -> `trans_cls_head`. The model returns their sum, the
authors' combined prediction; `return_heads=True` returns both, always.
The authors train on the mean of the two heads' cross-entropies (their
`engine.py`: `sum(criterion(o, y) / len(outputs) for o in outputs)`) and
evaluate the sum: with `train_heads=True` the model returns
`ConformerOutputs(conv_logits, trans_logits)` in training and the summed
logits in eval, and the classification task trains on that mean.

Registered: `conformer_tiny_patch16` (23,524,704 params at 1000 classes: the
authors' "23.5M"), `conformer_small_patch16` (37,673,424: "37.7M"),
`conformer_small_patch32`, `conformer_base_patch16` (83.3M), and
`conformer_cifar`: a 3x3 stride-1 stem without max-pool, 4x4 patches on a
32x32 input (8x8 tokens), CNN widths 64/128/256 and a 192-wide, 12-deep
transformer.

Parameter names follow the authors' code (`conv_1`, `trans_1`,
`conv_trans_{i}/{cnn_block, fusion_block, squeeze_block, expand_block,
trans_block}`, ...).
"""
import collections
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, LayerNorm, gelu, max_pool
from jaxcnn.models.vit import EncoderBlock
from jaxcnn.registry import register_model

ModuleDef = Callable[..., nn.Module]
# Training output with `train_heads=True`: the task averages the two heads' losses (the authors' criterion).
ConformerOutputs = collections.namedtuple("ConformerOutputs", ["conv_logits", "trans_logits"])

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_(fan_out)
dense_init = nn.initializers.truncated_normal(stddev=0.02)
BN_EPS = 1e-6     # the authors' ConvBlock / FCUUp BatchNorm
LN_EPS = 1e-6     # transformer blocks and FCUDown
EXPANSION = 4     # bottleneck expansion


class ConvBlock(nn.Module):
  """Bottleneck 1x1-3x3(stride)-1x1 with BN and ReLU, plus the (projected) shortcut, then ReLU.

  `x_t`, when given (FCUUp's output), is added to the input of the 3x3 conv.
  Returns (output, the 3x3 conv's activation) - the latter feeds FCUDown.
  """
  features: int
  conv: ModuleDef   # the model's Conv constructor (no bias)
  norm: ModuleDef   # the model's BatchNorm constructor
  strides: int = 1
  res_conv: bool = False
  groups: int = 1

  @nn.compact
  def __call__(self, x, x_t=None):
    width = self.features // EXPANSION
    y = nn.relu(self.norm(name="bn1")(self.conv(width, (1, 1), name="conv1")(x)))
    if x_t is not None:
      y = y + x_t
    y = self.conv(width, (3, 3), self.strides, padding=1, feature_group_count=self.groups, name="conv2")(y)
    y2 = nn.relu(self.norm(name="bn2")(y))
    y = self.norm(name="bn3")(self.conv(self.features, (1, 1), name="conv3")(y2))
    shortcut = x
    if self.res_conv:
      shortcut = self.conv(self.features, (1, 1), self.strides, name="residual_conv")(x)
      shortcut = self.norm(name="residual_bn")(shortcut)
    return nn.relu(y + shortcut), y2


class FCUDown(nn.Module):
  """CNN feature map -> patch tokens: 1x1 conv, avg-pool by `stride`, LN, GELU; the class token is x_t's."""
  embed_dim: int
  stride: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, x_t):
    x = Conv(self.embed_dim, (1, 1), kernel_init=conv_init, dtype=self.dtype,
             param_dtype=self.param_dtype, name="conv_project")(x)
    x = nn.avg_pool(x, (self.stride, self.stride), (self.stride, self.stride))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="ln")(x)
    x = gelu(x)
    return jnp.concatenate([x_t[:, :1].astype(x.dtype), x], axis=1)


class FCUUp(nn.Module):
  """Patch tokens -> CNN feature map: grid reshape, 1x1 conv, BN, ReLU, nearest upsampling by `stride`."""
  features: int
  stride: int
  norm: ModuleDef
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_t, height: int, width: int):
    x = x_t[:, 1:].reshape(x_t.shape[0], height, width, x_t.shape[-1])
    x = Conv(self.features, (1, 1), kernel_init=conv_init, dtype=self.dtype,
             param_dtype=self.param_dtype, name="conv_project")(x)
    x = nn.relu(self.norm(name="bn")(x))
    return jnp.repeat(jnp.repeat(x, self.stride, axis=1), self.stride, axis=2)


class ConvTransBlock(nn.Module):
  """One coupled step: CNN bottleneck, FCUDown, transformer block, [med blocks], FCUUp, fusion bottleneck."""
  features: int
  strides: int
  res_conv: bool
  dw_stride: int
  embed_dim: int
  num_heads: int
  mlp_dim: int
  conv: ModuleDef
  norm: ModuleDef
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0
  last_fusion: bool = False
  num_med_block: int = 0
  groups: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, x_t, train: bool = False):
    block = functools.partial(ConvBlock, conv=self.conv, norm=self.norm, groups=self.groups)
    x, x2 = block(self.features, strides=self.strides, res_conv=self.res_conv, name="cnn_block")(x)
    height, width = x2.shape[1:3]
    x_st = FCUDown(self.embed_dim, self.dw_stride, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="squeeze_block")(x2, x_t)
    x_t, _ = EncoderBlock(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                          attention_dropout=self.attention_dropout, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="trans_block")(x_st + x_t, self.drop_path_rate, train)
    for i in range(self.num_med_block):
      x, _ = block(self.features, name=f"med_block_{i}")(x)
    x_t_r = FCUUp(self.features // EXPANSION, self.dw_stride, self.norm, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="expand_block")(
                      x_t, height // self.dw_stride, width // self.dw_stride)
    fusion = block(self.features, strides=2, res_conv=True, name="fusion_block") if self.last_fusion \
        else block(self.features, name="fusion_block")
    x, _ = fusion(x, x_t_r)
    return x, x_t


class Conformer(nn.Module):
  """Conformer classifier on NHWC images; logits [B, num_classes] (sum of the two heads)."""
  num_classes: int = 1000
  patch_size: int = 16
  base_channel: int = 64
  channel_ratio: int = 4
  num_med_block: int = 0
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  dropout: float = 0.0             # the authors' drop_rate (attention output, MLP)
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0      # of the last transformer block; 0 at the first (linear)
  stem: str = "imagenet"           # 'imagenet': 7x7/2 conv + 3x3/2 max-pool; 'cifar': 3x3/1 conv
  stem_width: int = 64
  return_heads: bool = False       # True: (conv_logits, trans_logits) instead of their sum
  train_heads: bool = False        # True: ConformerOutputs(conv, trans) in training only (authors' loss)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.stem not in ("imagenet", "cifar"):
      raise UserError(f"Conformer stem={self.stem!r} is not supported (allowed: 'imagenet', 'cifar')")
    if self.depth < 3 or self.depth % 3:
      raise UserError(f"Conformer depth={self.depth} must be a positive multiple of 3 (three stages)")
    if self.embed_dim % self.num_heads:
      raise UserError(f"Conformer embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
    if self.patch_size % (EXPANSION * self._stem_stride()):
      raise UserError(f"Conformer patch_size={self.patch_size} must be a multiple of "
                      f"{EXPANSION * self._stem_stride()} with stem={self.stem!r}")
    if self.base_channel * self.channel_ratio < EXPANSION:
      raise UserError(f"Conformer base_channel * channel_ratio must be >= {EXPANSION}")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise UserError(f"Conformer drop_path_rate={self.drop_path_rate} must be in [0, 1)")
    super().__post_init__()

  def _stem_stride(self) -> int:
    return 4 if self.stem == "imagenet" else 1

  def _check_input(self, shape):
    height, width = shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise UserError(f"Conformer input {height}x{width} must be divisible by patch_size={self.patch_size}")

  @nn.compact
  def __call__(self, x, train: bool = False):
    self._check_input(x.shape)
    conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=BN_EPS,
                             axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)

    # Stem (torchvision BN eps 1e-5 here, as the authors' `bn1`).
    if self.stem == "imagenet":
      x = conv(self.stem_width, (7, 7), 2, padding=3, name="conv1")(x)
    else:
      x = conv(self.stem_width, (3, 3), 1, padding=1, name="conv1")(x)
    x_base = nn.relu(norm(epsilon=1e-5, name="bn1")(x))
    if self.stem == "imagenet":
      x_base = max_pool(x_base, 3, 2, padding=1)

    dw = self.patch_size // self._stem_stride()
    stage_channels = [self.base_channel * self.channel_ratio * 2**i for i in range(3)]
    rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()

    # Stage 1 entry: the CNN bottleneck and the first transformer block, on separate inputs.
    x, _ = ConvBlock(stage_channels[0], conv, norm, res_conv=True, name="conv_1")(x_base)
    x_t = Conv(self.embed_dim, (dw, dw), dw, padding="VALID", kernel_init=conv_init, dtype=self.dtype,
               param_dtype=self.param_dtype, name="trans_patch_conv")(x_base)
    x_t = x_t.reshape(x_t.shape[0], -1, self.embed_dim)
    cls = self.param("cls_token", dense_init, (1, 1, self.embed_dim), self.param_dtype)
    x_t = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x_t.shape[0], 1, self.embed_dim)), x_t], 1)
    transformer = dict(num_heads=self.num_heads, mlp_dim=int(self.embed_dim * self.mlp_ratio),
                       dropout=self.dropout, attention_dropout=self.attention_dropout,
                       dtype=self.dtype, param_dtype=self.param_dtype)
    x_t, _ = EncoderBlock(name="trans_1", **transformer)(x_t, rates[0], train)

    # Blocks 2 .. depth, depth // 3 per stage; the first of stages 2 and 3 halves the CNN map
    # (and its FCU stride), the very last one halves it again in its fusion block.
    per_stage = self.depth // 3
    for i in range(2, self.depth + 1):
      stage = (i - 1) // per_stage
      first = stage > 0 and (i - 1) % per_stage == 0
      x, x_t = ConvTransBlock(
          features=stage_channels[stage], strides=2 if first else 1, res_conv=first,
          dw_stride=dw // 2**stage, embed_dim=self.embed_dim, conv=conv, norm=norm,
          drop_path_rate=rates[i - 1], last_fusion=i == self.depth, num_med_block=self.num_med_block,
          name=f"conv_trans_{i}", **transformer)(x, x_t, train)

    conv_logits = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="conv_cls_head")(jnp.mean(x, axis=(1, 2)))
    x_t = LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype, name="trans_norm")(x_t)
    trans_logits = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="trans_cls_head")(x_t[:, 0])
    if self.return_heads:
      return conv_logits, trans_logits
    if self.train_heads and train:
      return ConformerOutputs(conv_logits, trans_logits)
    return conv_logits + trans_logits


def _register():
  imagenet = dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, num_classes=1000)
  register_model("conformer_tiny_patch16", patch_size=16, channel_ratio=1, **imagenet)(Conformer)
  register_model("conformer_small_patch16", patch_size=16, channel_ratio=4, **imagenet)(Conformer)
  register_model("conformer_small_patch32", patch_size=32, channel_ratio=4, **imagenet)(Conformer)
  register_model("conformer_base_patch16", patch_size=16, channel_ratio=6, embed_dim=576, depth=12,
                 num_heads=9, mlp_ratio=4.0, num_classes=1000)(Conformer)
  register_model("conformer_cifar", stem="cifar", patch_size=4, channel_ratio=1, embed_dim=192, depth=12,
                 num_heads=3, mlp_ratio=4.0, num_classes=10)(Conformer)


_register()
