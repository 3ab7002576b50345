"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

In the spirit of big_vision's `models/vit.py`: patches embedded by a strided
convolution, a class token (pool='cls') or none (pool='gap'), a learned
position embedding whose shape comes from the input at init, pre-LN encoder
blocks, a final LayerNorm and a zero-initialised linear head.

Parameter names follow timm's `VisionTransformer`, so its weights map by name
(kernels transposed): patch_embed, cls_token, pos_embed, blocks_{i}/{norm1,
attn/{qkv,proj}, norm2, mlp/{fc1,fc2}}, norm, head. With `scan_layers=True`
the blocks are one `blocks` subtree whose leaves carry a leading depth axis;
`scan_params` / `unscan_params` convert between the two layouts;
`adapt_pretrained` (the registry's fine-tuning hook) brings converted weights
to a model's layout and resolution.

The `*_patch16_224` / `*_patch32_224` variants have timm's (and torchvision's)
exact parameter counts at 224x224 with 1000 classes, e.g. vit_base_patch16_224
86,567,656.

DeiT's distilled ViTs (Touvron et al. 2021; `distilled=True`, the `deit_*_distilled_patch16_224` variants with
timm's parameter counts, e.g. deit_tiny_distilled 5,910,800): a second, distillation token after the class
token (timm's `dist_token`, position-embedded with it) read out by its own head (`head_dist`). The model
returns the two heads' mean, as timm's `VisionTransformerDistilled` at eval; `heads=True` returns the pair
(class logits, distillation logits) for the `distill` task's loss.

Logits come out in the compute `dtype` (bfloat16 under bfloat16 compute); the
classification task casts them to float32 for the loss.
"""
import logging
import math
from typing import Any, ClassVar, Dict, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, LayerNorm, gelu
from jaxcnn.layers.attention import MultiHeadSelfAttention
from jaxcnn.registry import register_model

log = logging.getLogger("jaxcnn")

LN_EPS = 1e-6  # ViT / big_vision / timm all use 1e-6, not flax's 1e-5 default.


def drop_path(module: nn.Module, x, rate, train: bool):
  """Stochastic depth: zeroes whole samples of a residual branch with prob `rate`.

  `rate` may be a traced scalar (one per layer under nn.scan), or None for off. Kept samples are
  scaled by 1 / (1 - rate) so the expectation is unchanged.
  """
  if not train or rate is None or (isinstance(rate, (int, float)) and rate == 0):
    return x
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(module.make_rng("drop_path"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, with dropout after each Dense.

  Runs on the tokens flattened to [tokens, width]: a Dense on [B, N, width]
  makes XLA:CPU transpose the activations for each kernel gradient (2x slower).
  """
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dense = lambda features, name: nn.Dense(
        features, kernel_init=nn.initializers.xavier_uniform(),
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    shape = x.shape
    x = dense(self.mlp_dim, "fc1")(x.reshape(-1, shape[-1]))
    x = gelu(x)  # exact erf GELU, as timm / torch nn.GELU
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = dense(shape[-1], "fc2")(x).reshape(shape)
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)).

  Returns (x, None) so the same class runs as a body of nn.scan.
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, drop_path_rate, train: bool = False):
    norm = lambda name: LayerNorm(epsilon=LN_EPS, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    y = norm("norm1")(x)
    y = MultiHeadSelfAttention(num_heads=self.num_heads, dropout_rate=self.attention_dropout,
                               dtype=self.dtype, param_dtype=self.param_dtype, name="attn")(y, train=train)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    x = x + drop_path(self, y, drop_path_rate, train)

    y = norm("norm2")(x)
    y = MlpBlock(self.mlp_dim, self.dropout, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="mlp")(y, train=train)
    x = x + drop_path(self, y, drop_path_rate, train)
    return x, None


class ViT(nn.Module):
  """Vision Transformer classifier on NHWC images; logits [B, num_classes]."""
  num_classes: int = 10
  patch_size: int = 4
  width: int = 192
  depth: int = 6
  num_heads: int = 3
  mlp_dim: int = 768
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.0  # of the last block; rises linearly from 0 at the first (timm)
  pool: str = "cls"  # 'cls': class token; 'gap': mean over patch tokens, no class token
  distilled: bool = False  # DeiT: a distillation token and head after the class token (pool='cls')
  scan_layers: bool = False  # one nn.scan over the blocks: compile time flat in depth
  remat: bool = False  # recompute each block's activations in the backward pass
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # XLA:CPU options for the train step (read by Task.compiler_options): without YNNPACK fusions
  # the projections and MLP matmuls run on Eigen, 3-7% faster per vit_tiny_patch4_32 step
  # (in-process A/B, benchmarks/README.md); the CNNs keep YNNPACK (mobilenet_v2 1.6x slower without).
  cpu_compiler_options: ClassVar[Dict[str, Any]] = {"xla_cpu_experimental_ynn_fusion_type": ""}

  def _check_options(self, image_shape):
    if self.pool not in ("cls", "gap"):
      raise UserError(f"ViT pool must be 'cls' or 'gap', got {self.pool!r}")
    if self.distilled and self.pool != "cls":
      raise UserError("a distilled ViT (DeiT) needs pool='cls'")
    if self.width % self.num_heads:
      raise UserError(f"ViT width {self.width} must be divisible by num_heads {self.num_heads}")
    if not 0 <= self.drop_path_rate < 1:
      raise UserError(f"ViT drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
    height, width = image_shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise UserError(f"ViT input {height}x{width} is not divisible by patch_size {self.patch_size}")

  def _position_embedding(self, num_tokens):
    """The learned [1, tokens, width] embedding; its shape is fixed by the input at init."""
    if self.has_variable("params", "pos_embed"):
      stored = self.get_variable("params", "pos_embed").shape[1]
      if stored != num_tokens:
        raise UserError(
            f"ViT position embedding holds {stored} tokens but this input gives {num_tokens}; "
            "initialise at this resolution or convert with jaxcnn.models.vit.resample_posemb")
    return self.param("pos_embed", nn.initializers.normal(stddev=1 / math.sqrt(self.width)),
                      (1, num_tokens, self.width), self.param_dtype)

  def _encode(self, x, train):
    """The `depth` encoder blocks, unrolled or as one nn.scan."""
    rates = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
    block = EncoderBlock
    if self.remat:  # argnums count self: (self, x, drop_path_rate, train)
      # Unrolled, the rates are Python floats: static, so a zero rate stays a no-op (no rng, no mask).
      static = (3,) if self.scan_layers else (2, 3)
      block = nn.remat(block, prevent_cse=not self.scan_layers, static_argnums=static)
    options = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                   attention_dropout=self.attention_dropout, dtype=self.dtype,
                   param_dtype=self.param_dtype)
    if not self.scan_layers:
      for i, rate in enumerate(rates):
        x, _ = block(name=f"blocks_{i}", **options)(x, rate, train)
      return x
    # Per-layer drop-path rates are scanned over; with none the rate is None (static even under remat).
    scanned_rates = jnp.asarray(rates, jnp.float32) if self.drop_path_rate > 0 else None
    blocks = nn.scan(block, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True, "drop_path": True},
                     in_axes=(0 if self.drop_path_rate > 0 else nn.broadcast, nn.broadcast),
                     length=self.depth)(name="blocks", **options)
    x, _ = blocks(x, scanned_rates, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False, heads: bool = False):
    self._check_options(x.shape)
    x = jnp.asarray(x, self.dtype)
    p = self.patch_size
    x = Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
             param_dtype=self.param_dtype, name="patch_embed")(x)
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height * width, channels)
    if self.pool == "cls":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, channels), self.param_dtype)
      tokens = [cls]
      if self.distilled:
        tokens.append(self.param("dist_token", nn.initializers.truncated_normal(0.02), (1, 1, channels),
                                 self.param_dtype))
      x = jnp.concatenate([jnp.broadcast_to(t.astype(self.dtype), (batch, 1, channels)) for t in tokens] + [x],
                          axis=1)
    x = x + self._position_embedding(x.shape[1]).astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)

    x = self._encode(x, train)
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    head = lambda name: nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=name)
    if self.distilled:
      logits, dist_logits = head("head")(x[:, 0]), head("head_dist")(x[:, 1])
      return (logits, dist_logits) if heads else (logits + dist_logits) / 2
    return head("head")(x[:, 0] if self.pool == "cls" else x.mean(axis=1))


def scan_params(params, depth: Optional[int] = None):
  """Unrolled layout (blocks_0 .. blocks_{d-1}) -> scan layout (`blocks`, leading depth axis)."""
  params = dict(params)
  depth = depth if depth is not None else sum(1 for k in params if k.startswith("blocks_"))
  if depth == 0 or any(f"blocks_{i}" not in params for i in range(depth)):
    raise UserError(f"expected params blocks_0 .. blocks_{depth - 1}; found {sorted(params)}")
  layers = [params.pop(f"blocks_{i}") for i in range(depth)]
  params["blocks"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
  return params


def unscan_params(params):
  """Scan layout (`blocks`, leading depth axis) -> unrolled layout blocks_0 .. blocks_{d-1}."""
  params = dict(params)
  if "blocks" not in params:
    raise UserError(f"expected a scanned 'blocks' subtree; found {sorted(params)}")
  stacked = params.pop("blocks")
  depth = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(depth):
    params[f"blocks_{i}"] = jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
  return params


def resample_posemb(posemb, new_grid: Union[int, Sequence[int]],
                    num_prefix_tokens: Optional[int] = None, method: str = "bilinear"):
  """Resizes the patch-grid part of a [1, prefix + gh*gw, D] position embedding.

  For fine-tuning at a new resolution: the class token (prefix) is kept as is,
  the square patch grid is resized to `new_grid` (int or (h, w)). The prefix
  length is inferred (0 or 1, whichever leaves a square grid) unless given.
  Half-pixel centres, downsampling antialiased (jax.image.resize):
  method='bilinear' equals torch's F.interpolate(mode='bilinear',
  align_corners=False, antialias=True) to 1e-6; method='bicubic' equals timm's
  `resample_abs_pos_embed` default (torch bicubic, antialias=True, whose
  antialiased path uses the a=-0.5 Keys kernel like jax) to ~2e-6. Without
  antialias torch's bicubic uses a=-0.75, which differs.
  """
  if method not in ("bilinear", "bicubic"):
    raise UserError(f"resample_posemb method must be 'bilinear' or 'bicubic', got {method!r}")
  posemb = jnp.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise UserError(f"resample_posemb expects [1, tokens, dim], got shape {posemb.shape}")
  tokens, dim = posemb.shape[1:]
  if num_prefix_tokens is None:
    num_prefix_tokens = next((k for k in (0, 1) if tokens > k and math.isqrt(tokens - k) ** 2 == tokens - k), None)
    if num_prefix_tokens is None:
      raise UserError(f"resample_posemb: {tokens} tokens are neither a square grid nor 1 + a square grid; "
                      "pass num_prefix_tokens")
  old = math.isqrt(tokens - num_prefix_tokens)
  if old * old != tokens - num_prefix_tokens:
    raise UserError(f"resample_posemb: {tokens - num_prefix_tokens} grid tokens are not a square grid")
  new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  grid = grid.reshape(1, old, old, dim).astype(jnp.float32)
  grid = jax.image.resize(grid, (1, new_h, new_w, dim), method=method, antialias=True)
  grid = grid.reshape(1, new_h * new_w, dim).astype(posemb.dtype)
  return jnp.concatenate([prefix, grid], axis=1)


def adapt_pretrained(variables: dict, target: dict) -> dict:
  """ViT weights (converted, unrolled `blocks_i`) brought to a target model's layout, for fine-tuning.

  `target` holds the fine-tuning model's variables (arrays or shape structs). A
  `scan_layers=True` target keeps its blocks as one stacked `blocks` subtree; a
  position embedding of another token count is resampled to the target's square
  grid (bicubic, antialiased: timm's `resample_abs_pos_embed`). Everything else
  passes through unchanged. Found by `jaxcnn.train.finetune` through the registry
  (`ViT.adapt_pretrained`), so the trainer knows nothing of this layout.
  """
  params, fresh = dict(variables.get("params", {})), target.get("params", {})
  if "blocks" in fresh and "blocks_0" in params and "blocks_0" not in fresh:
    params = scan_params(params)
  if "pos_embed" in fresh and "pos_embed" in params:
    old, new = np.shape(params["pos_embed"]), tuple(fresh["pos_embed"].shape)
    if old != new and old[2] == new[2]:
      prefix = ("cls_token" in fresh) + ("dist_token" in fresh)
      grid = int(round((new[1] - prefix) ** 0.5))
      params["pos_embed"] = np.asarray(resample_posemb(params["pos_embed"], grid, num_prefix_tokens=prefix,
                                                       method="bicubic"))
      log.info("fine-tuning: resampled pos_embed %s -> %s", tuple(old), new)
  return {**variables, "params": params}


ViT.adapt_pretrained = staticmethod(adapt_pretrained)

register_model("vit")(ViT)
# CIFAR-sized (32x32, 4x4 patches, 64 patches + class token).
register_model("vit_tiny_patch4_32", patch_size=4, width=192, depth=12, num_heads=3, mlp_dim=768)(ViT)
register_model("vit_small_patch4_32", patch_size=4, width=384, depth=12, num_heads=6, mlp_dim=1536)(ViT)
# ImageNet variants of timm / the ViT paper (224x224, 1000 classes).
_IMAGENET_SIZES = {
    "tiny": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "large": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}
for _size, _dims in _IMAGENET_SIZES.items():
  for _patch in (16, 32):
    if (_size, _patch) != ("tiny", 32):  # timm has no ViT-Ti/32
      register_model(f"vit_{_size}_patch{_patch}_224", patch_size=_patch, num_classes=1000, **_dims)(ViT)
# DeiT's distilled variants (timm's deit_*_distilled_patch16_224; DeiT-Ti/S/B are ViT-Ti/S/B).
for _size in ("tiny", "small", "base"):
  register_model(f"deit_{_size}_distilled_patch16_224", patch_size=16, num_classes=1000, distilled=True,
                 **_IMAGENET_SIZES[_size])(ViT)
# CIFAR-sized DeiT-Ti with a distillation token (4x4 patches: 64 patches + 2 tokens).
register_model("deit_tiny_distilled_patch4_32", patch_size=4, distilled=True, **_IMAGENET_SIZES["tiny"])(ViT)
