"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").

An image tower and a text tower map images and captions into one embedding space:

    model = create_model("clip_vit_b32")
    variables = model.init(rng, images, tokens)            # images [B, 224, 224, 3], tokens int32 [B, 77]
    out = model.apply(variables, images, tokens)           # {'image', 'text': L2-normalised [B, 512],
                                                           #  'logit_scale': exp(param), ('logit_bias')}
    model.apply(variables, images, method="encode_image")  # [B, 512], not normalised
    model.apply(variables, tokens, method="encode_text")   # [B, 512], pooled at the end-of-text token

Images are NHWC floats normalised with OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (0-1 pixel scale); tokens
come from `jaxcnn.data.tokenizer.tokenize`.

Towers, as OpenAI's CLIP and open_clip build them (read from open_clip 3.3's transformer.py and
modified_resnet.py):
- ViT image tower: patches by a bias-free strided convolution, a class token, a learned position
  embedding, `ln_pre` before the blocks, `ln_post` on the class token, a bias-free projection.
- ModifiedResNet image tower: a 3-convolution stem with a 2x2 average pool, bottlenecks that
  downsample by a 2x2 average pool after their 3x3 convolution ("anti-aliased") and on the shortcut
  before its 1x1 convolution, and an attention-pooling head (the query is the mean token).
- Text tower: token + position embeddings, causal pre-LN transformer, `ln_final`, pooled at the
  end-of-text token (the largest id of each row), a bias-free projection.
Both transformers use one residual block (`ResidualAttentionBlock`: LayerNorm eps 1e-5, fused qkv
attention, MLP with QuickGELU x * sigmoid(1.702 x), the activation OpenAI's weights were trained
with). The project's ViT block (jaxcnn/models/vit.py) differs (eps 1e-6, exact GELU, timm names), so
only the attention layer (jaxcnn.layers.attention.MultiHeadSelfAttention) is shared with it.

Parameters: {'visual': ..., 'text': ..., 'logit_scale': (), 'logit_bias': () with SigLIP}; BatchNorm
statistics of the ResNet tower under 'batch_stats'/'visual'. Weights of open_clip / OpenAI load
through jaxcnn/convert/clip.py. The registered big variants have open_clip's exact parameter counts
(`ViT-B-32-quickgelu` etc.; README, tests/models/test_clip.py).

SigLIP (Zhai et al. 2023) uses the same towers with a learned bias: `init_logit_bias=-10.0,
init_logit_scale=log(10)` (the `*_siglip` registrations); the loss lives in jaxcnn/losses.py.
"""
import math
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, LayerNorm, avg_pool, gelu
from jaxcnn.layers.attention import MultiHeadSelfAttention, dot_product_attention_weights
from jaxcnn.registry import register_model

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5  # torch's LayerNorm default, which CLIP uses
CLIP_LOGIT_SCALE = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE, SIGLIP_LOGIT_BIAS = math.log(10.0), -10.0


def quick_gelu(x):
  """OpenAI's GELU approximation x * sigmoid(1.702 x); their CLIP weights expect it."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


def _normal(std):
  return nn.initializers.normal(stddev=std)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x)); `mask` is an additive attention bias [N, N].

  Initialised as open_clip's text tower (normal, attention std width^-0.5, output projections
  scaled down by (2 * layers)^-0.5).
  """
  num_heads: int
  layers: int  # of the whole stack, for the output-projection init
  mlp_ratio: float = 4.0
  activation: str = "quick_gelu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    width = x.shape[-1]
    attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
    proj_std = attn_std * (2 * self.layers) ** -0.5
    norm = lambda name: LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    dense = lambda features, std, name: nn.Dense(features, kernel_init=_normal(std), dtype=self.dtype,
                                                 param_dtype=self.param_dtype, name=name)
    attention = MultiHeadSelfAttention(num_heads=self.num_heads, kernel_init=_normal(attn_std), dtype=self.dtype,
                                       param_dtype=self.param_dtype, name="attn")
    x = x + attention(norm("ln_1")(x), bias=mask)
    # The MLP runs on [tokens, width] (faster kernel gradients on XLA:CPU, see jaxcnn/models/vit.py).
    y = norm("ln_2")(x).reshape(-1, width)
    y = ACTIVATIONS[self.activation](dense(int(width * self.mlp_ratio), fc_std, "c_fc")(y))
    y = dense(width, proj_std, "c_proj")(y)
    return x + y.reshape(x.shape)


class Transformer(nn.Module):
  """`layers` residual attention blocks, `resblocks_{i}` (open_clip's `transformer.resblocks.{i}`)."""
  layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  activation: str = "quick_gelu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.num_heads, self.layers, self.mlp_ratio, self.activation, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=f"resblocks_{i}")(x, mask)
    return x


def _check_image(images, image_size: int, tower: str):
  if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
    raise UserError(f"{tower} image tower expects images [B, {image_size}, {image_size}, 3], got shape "
                    f"{tuple(images.shape)}")


class VisionTransformer(nn.Module):
  """CLIP's ViT image tower: NHWC images -> [B, output_dim]."""
  image_size: int
  patch_size: int
  width: int
  layers: int
  num_heads: int
  output_dim: int
  mlp_ratio: float = 4.0
  activation: str = "quick_gelu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # no dropout or batch statistics
    _check_image(images, self.image_size, "the ViT")
    if self.image_size % self.patch_size:
      raise UserError(f"CLIP ViT image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
    p, scale = self.patch_size, self.width ** -0.5
    x = Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
             param_dtype=self.param_dtype, name="conv1")(jnp.asarray(images, self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.width)
    cls = self.param("class_embedding", _normal(scale), (self.width,), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), x], axis=1)
    x = x + self.param("positional_embedding", _normal(scale), x.shape[1:], self.param_dtype).astype(self.dtype)
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_pre")(x)
    x = Transformer(self.layers, self.num_heads, self.mlp_ratio, self.activation, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="transformer")(x)
    # ln_post is per token, so normalising only the class token equals open_clip's all-token LN.
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_post")(x[:, 0])
    proj = self.param("proj", _normal(scale), (self.width, self.output_dim), self.param_dtype)
    return x @ proj.astype(self.dtype)


class Bottleneck(nn.Module):
  """CLIP's bottleneck: 1x1, 3x3, 2x2 average pool when strided, 1x1 (x4); shortcut pool + 1x1 + BN."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda features, kernel, name: Conv(features, (kernel, kernel), padding=kernel // 2, use_bias=False,
                                               dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    norm = lambda name, scale_init=nn.initializers.ones: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=scale_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    pool = (lambda y: avg_pool(y, self.stride, self.stride)) if self.stride > 1 else (lambda y: y)
    out = nn.relu(norm("bn1")(conv(self.planes, 1, "conv1")(x)))
    out = pool(nn.relu(norm("bn2")(conv(self.planes, 3, "conv2")(out))))
    # bn3 starts at zero (open_clip's init): each block starts as its shortcut.
    out = norm("bn3", nn.initializers.zeros)(conv(self.planes * 4, 1, "conv3")(out))
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      x = norm("downsample_bn")(conv(self.planes * 4, 1, "downsample_conv")(pool(x)))
    return nn.relu(out + x)


class AttentionPool2d(nn.Module):
  """Multi-head attention of the mean token (plus position embedding) over all tokens -> [B, output_dim]."""
  num_heads: int
  output_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, dim = x.shape
    x = x.reshape(batch, height * width, dim)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    x = x + self.param("positional_embedding", _normal(dim ** -0.5), x.shape[1:], self.param_dtype).astype(x.dtype)
    dense = lambda features, name: nn.Dense(features, kernel_init=_normal(dim ** -0.5), dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    head_dim = dim // self.num_heads
    split = lambda y: y.reshape(batch, -1, self.num_heads, head_dim).transpose(0, 2, 1, 3)  # [B, heads, N, d]
    query = split(dense(dim, "q_proj")(x[:, :1]))  # only the mean token's output is kept
    key, value = split(dense(dim, "k_proj")(x)), split(dense(dim, "v_proj")(x))
    weights = dot_product_attention_weights(query, key)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights.astype(value.dtype), value).reshape(batch, dim)
    return dense(self.output_dim, "c_proj")(out)


class ModifiedResNet(nn.Module):
  """CLIP's ResNet image tower: NHWC images -> [B, output_dim]."""
  image_size: int
  layers: Tuple[int, int, int, int]
  width: int
  num_heads: int
  output_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    _check_image(images, self.image_size, "the ResNet")
    if self.image_size % 32:
      raise UserError(f"CLIP ResNet image_size must be a multiple of 32, got {self.image_size}")
    x = jnp.asarray(images, self.dtype)
    for i, (features, stride) in enumerate([(self.width // 2, 2), (self.width // 2, 1), (self.width, 1)], 1):
      x = Conv(features, (3, 3), strides=stride, padding=1, use_bias=False, dtype=self.dtype,
               param_dtype=self.param_dtype, name=f"conv{i}")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                               param_dtype=self.param_dtype, name=f"bn{i}")(x))
    x = avg_pool(x, 2, 2)
    for stage, blocks in enumerate(self.layers):
      for block in range(blocks):
        x = Bottleneck(self.width * 2 ** stage, 2 if stage and not block else 1, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"layer{stage + 1}_{block}")(x, train)
    return AttentionPool2d(self.num_heads, self.output_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="attnpool")(x)


class TextTransformer(nn.Module):
  """CLIP's text tower: token ids [B, L] (L <= context_length) -> [B, output_dim] at the end-of-text token."""
  context_length: int
  vocab_size: int
  width: int
  layers: int
  num_heads: int
  output_dim: int
  mlp_ratio: float = 4.0
  activation: str = "quick_gelu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
      raise UserError(f"the text tower expects token ids [B, L] with L <= context_length {self.context_length}, "
                      f"got shape {tuple(tokens.shape)} (tokenize with context_length={self.context_length})")
    length = tokens.shape[1]
    x = nn.Embed(self.vocab_size, self.width, embedding_init=_normal(0.02), dtype=self.dtype,
                 param_dtype=self.param_dtype, name="token_embedding")(tokens)
    positions = self.param("positional_embedding", _normal(0.01), (self.context_length, self.width),
                           self.param_dtype)
    x = x + positions[:length].astype(self.dtype)
    causal = jnp.triu(jnp.full((length, length), -jnp.inf, jnp.float32), k=1)
    x = Transformer(self.layers, self.num_heads, self.mlp_ratio, self.activation, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="transformer")(x, causal)
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(x)
    # The end-of-text token has the largest id of each row (open_clip's 'argmax' pooling).
    x = jnp.take_along_axis(x, jnp.argmax(tokens, axis=-1)[:, None, None], axis=1)[:, 0]
    proj = self.param("text_projection", _normal(self.width ** -0.5), (self.width, self.output_dim),
                      self.param_dtype)
    return x @ proj.astype(self.dtype)


class CLIP(nn.Module):
  """Image tower + text tower + learned temperature (and bias, SigLIP); see the module docstring.

  `vision_layers`: an int builds the ViT tower, four ints the ModifiedResNet (blocks per stage).
  """
  embed_dim: int = 512
  image_size: int = 224
  vision_layers: Union[int, Sequence[int]] = 12
  vision_width: int = 768
  vision_patch_size: int = 32
  vision_head_width: int = 64
  context_length: int = 77
  vocab_size: int = 49408
  text_width: int = 512
  text_heads: int = 8
  text_layers: int = 12
  mlp_ratio: float = 4.0
  activation: str = "quick_gelu"
  init_logit_scale: float = CLIP_LOGIT_SCALE
  init_logit_bias: Optional[float] = None  # SigLIP: -10.0 (with init_logit_scale=log(10))
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.activation not in ACTIVATIONS:
      raise UserError(f"CLIP activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
    common = dict(output_dim=self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    if isinstance(self.vision_layers, int):
      if self.vision_width % self.vision_head_width:
        raise UserError(f"CLIP vision_width {self.vision_width} is not a multiple of vision_head_width "
                        f"{self.vision_head_width}")
      self.visual = VisionTransformer(self.image_size, self.vision_patch_size, self.vision_width, self.vision_layers,
                                      self.vision_width // self.vision_head_width, mlp_ratio=self.mlp_ratio,
                                      activation=self.activation, **common)
    else:
      if len(self.vision_layers) != 4:
        raise UserError(f"CLIP ResNet vision_layers must be 4 block counts, got {tuple(self.vision_layers)}")
      self.visual = ModifiedResNet(self.image_size, tuple(self.vision_layers), self.vision_width,
                                   self.vision_width * 32 // self.vision_head_width, **common)
    self.text = TextTransformer(self.context_length, self.vocab_size, self.text_width, self.text_layers,
                                self.text_heads, mlp_ratio=self.mlp_ratio, activation=self.activation, **common)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.init_logit_scale), (), jnp.float32)
    if self.init_logit_bias is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.init_logit_bias), (), jnp.float32)

  def encode_image(self, images, train: bool = False):
    """[B, H, W, 3] normalised images -> [B, embed_dim] image embeddings (not normalised)."""
    return self.visual(images, train)

  def encode_text(self, tokens, train: bool = False):
    """int [B, L] token ids -> [B, embed_dim] text embeddings (not normalised)."""
    del train  # the text tower has no dropout or batch statistics
    return self.text(tokens)

  def __call__(self, images, tokens, train: bool = False):
    normalise = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    out = {"image": normalise(self.encode_image(images, train).astype(jnp.float32)),
           "text": normalise(self.encode_text(tokens, train).astype(jnp.float32)),
           "logit_scale": jnp.exp(self.logit_scale)}
    if self.init_logit_bias is not None:
      out["logit_bias"] = self.logit_bias
    return out


# open_clip's `*-quickgelu` model configs (OpenAI's architectures).
_TEXT_B = dict(text_width=512, text_heads=8, text_layers=12)
VARIANTS = {
    "clip_vit_b32": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=32, **_TEXT_B),
    "clip_vit_b16": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=16, **_TEXT_B),
    "clip_vit_l14": dict(embed_dim=768, vision_layers=24, vision_width=1024, vision_patch_size=14,
                         text_width=768, text_heads=12, text_layers=12),
    "clip_rn50": dict(embed_dim=1024, vision_layers=(3, 4, 6, 3), vision_width=64, **_TEXT_B),
    # Small models that train on 2 CPU cores (32x32 images, e.g. upscaled digits; 32-token captions).
    "clip_tiny": dict(embed_dim=128, image_size=32, vision_layers=3, vision_width=128, vision_patch_size=8,
                      vision_head_width=32, context_length=32, text_width=128, text_heads=4, text_layers=3),
    "clip_tiny_rn": dict(embed_dim=128, image_size=32, vision_layers=(1, 1, 1, 1), vision_width=16,
                         vision_head_width=64, context_length=32, text_width=128, text_heads=4, text_layers=3),
}
register_model("clip")(CLIP)
for _name, _config in VARIANTS.items():
  register_model(_name, **_config)(CLIP)
  register_model(f"{_name}_siglip", init_logit_scale=SIGLIP_LOGIT_SCALE, init_logit_bias=SIGLIP_LOGIT_BIAS,
                 **_config)(CLIP)
