"""Multi-head self-attention over a token axis, shared by ViT and the hybrid models.

Parameter layout (chosen so timm / PyTorch weights import by a transpose):
  qkv/kernel  [dim, 3 * qkv_features]   timm `attn.qkv.weight` [3 * dim, dim], transposed
  qkv/bias    [3 * qkv_features]        timm `attn.qkv.bias`
  proj/kernel [qkv_features, out]       timm `attn.proj.weight`, transposed
  proj/bias   [out]                     timm `attn.proj.bias`
The fused output splits as (3, heads, head_dim) along its last axis, the order
timm uses (`qkv.reshape(B, N, 3, heads, head_dim)`), so no column shuffling is
needed. torchvision's `in_proj_weight` uses the same [q; k; v] stacking.

Speed on CPU (measured, vit_tiny_patch4_32 shapes, forward + backward): the
projections run on tokens flattened to [B * N, dim] (a Dense on [B, N, dim]
makes XLA:CPU transpose the activations for every kernel gradient: 2x slower),
and q, k, v are split head-major ([B, heads, N, head_dim], one transpose of
the fused qkv, as timm does) for two batched matmuls: 1.5x faster than
`jax.nn.dot_product_attention`'s token-major einsums. Same function either way.
Faster still, and the default on CPU where it applies (float32, no logit
bias, no attention dropout, oneDNN available, `JAXCNN_CPU_CONV` at its
default): `jaxcnn.layers.onednn.attention`, one custom call forward and one
backward that read q, k, v straight out of the fused qkv (benchmarks/README.md).
"""
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import cpu_conv, onednn

Initializer = Callable[..., jax.Array]


def _onednn_attention(qkv) -> bool:
  """True when the CPU attention should be jaxcnn.layers.onednn's fused custom calls."""
  return cpu_conv.mode() == "onednn" and onednn.supports_attention(qkv) and onednn.available()


def _as_4d_bias(bias, dtype=jnp.float32):
  """[N, N], [heads, N, N] or [B, heads, N, N] -> a 4-D array broadcastable to [B, heads, N, N]."""
  bias = jnp.asarray(bias, dtype)
  return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def dot_product_attention_weights(query, key, bias=None):
  """softmax(q k^T / sqrt(d) + bias) in float32; q, k: [B, heads, N, d] -> [B, heads, N, N]."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + _as_4d_bias(bias)
  return jax.nn.softmax(logits, axis=-1)


class MultiHeadSelfAttention(nn.Module):
  """Self-attention: fused `qkv` projection, scaled dot-product, output `proj`.

  Input [..., N, dim] (any leading batch axes, e.g. [B * windows, N, dim] for
  window attention), output [..., N, out_features or dim].

  On GPU/TPU, or when `implementation` is set, the scaled dot-product goes
  through `jax.nn.dot_product_attention`, which picks fused kernels where the
  backend has them (`implementation='cudnn'` forces cuDNN flash attention on
  GPU). On CPU (no fused kernel in XLA there) it is oneDNN's custom calls, or
  two head-major batched matmuls around a float32 softmax (see the module
  docstring). `jax.nn.dot_product_attention` has no dropout, so when
  `dropout_rate > 0` and `train=True` the head-major weights are formed
  explicitly and dropped with the 'dropout' rng.

  `bias` is an additive logit bias broadcastable to [B, heads, N, N], e.g. the
  [heads, N, N] relative position bias of Swin / MaxViT.
  """
  num_heads: int
  qkv_features: Optional[int] = None  # total width of q (and k, v); default: input width
  out_features: Optional[int] = None  # default: input width
  dropout_rate: float = 0.0  # dropout on the attention weights
  use_bias: bool = True  # bias of the qkv projection (timm `qkv_bias`)
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  implementation: Optional[str] = None  # jax.nn.dot_product_attention: None | 'xla' | 'cudnn'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _fused_attention(self, qkv, bias):
    """jax.nn.dot_product_attention on token-major q, k, v; qkv: [B, N, 3, heads, d] -> [B, N, heads, d]."""
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if bias is not None:  # float32 logits + float32 bias; cuDNN wants the input dtype
      bias = _as_4d_bias(bias, query.dtype if self.implementation == "cudnn" else jnp.float32)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, implementation=self.implementation)

  def _head_major_attention(self, qkv, bias, train):
    """Batched matmuls over [B, heads, N, d]; qkv: [B, N, 3, heads, d] -> [B, N, heads, d]."""
    query, key, value = qkv.transpose(2, 0, 3, 1, 4)  # 3 x [B, heads, N, d]
    weights = dot_product_attention_weights(query, key, bias)
    if train and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate, deterministic=False)(weights)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype), value)
    return out.transpose(0, 2, 1, 3)

  @nn.compact
  def __call__(self, x, bias=None, train: bool = False):
    *batch, length, dim = x.shape
    features = self.qkv_features or dim
    if features % self.num_heads:
      raise ValueError(f"attention width {features} is not divisible by {self.num_heads} heads")
    head_dim = features // self.num_heads
    sequences = math.prod(batch)

    # Projections on [tokens, dim]: see the module docstring.
    qkv = nn.Dense(3 * features, use_bias=self.use_bias, kernel_init=self.kernel_init,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x.reshape(-1, dim))
    qkv = qkv.reshape(sequences, length, 3, self.num_heads, head_dim)
    dropout = train and self.dropout_rate > 0
    on_cpu = self.implementation is None and jax.default_backend() == "cpu"
    if on_cpu and not dropout and bias is None and _onednn_attention(qkv):
      out = onednn.attention(qkv, head_dim ** -0.5)
    elif dropout or on_cpu:
      out = self._head_major_attention(qkv, bias, train)
    else:
      out = self._fused_attention(qkv, bias)

    out = nn.Dense(self.out_features or dim, kernel_init=self.kernel_init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="proj")(out.reshape(sequences * length, features))
    return out.reshape(*batch, length, out.shape[-1])
