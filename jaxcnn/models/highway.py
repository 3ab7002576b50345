"""Convolutional highway networks (Srivastava, Greff & Schmidhuber 2015, "Training Very Deep Networks").

A highway layer keeps its input's shape and gates between transforming and
carrying it (paper eq. 3, with the carry gate C = 1 - T):

    y = H(x) * T(x) + x * (1 - T(x)),   H(x) = ReLU(conv(x)),   T(x) = sigmoid(conv_T(x))

Both are k x k "same" convolutions (sec. 2: same receptive fields, zero
padding). The transform gate's bias starts negative (sec. 2.2 suggests -1,
-3, ...), so a new network first carries its input through most layers
and deep stacks train with plain gradient descent.

The model: for each stage, a plain conv-ReLU changes the width (a highway
layer cannot), `layers_per_stage` highway layers follow, then 2x2 max-pooling
between stages; global average pooling and a linear classifier at the end.
The default `highway_net` has widths 32-64-128 and 5 highway layers per
stage: 3 plain + 15 highway convolutional layers + the classifier = 19
layers, the depth of the paper's CIFAR-10 "Highway B" (whose exact widths
are in the authors' released configuration, not in the paper; the counts
here are this implementation's: 2,032,138 parameters at 10 classes; the paper
reports ~2.3M for Highway B).
No BatchNorm, as in the paper. `dropout_rate` (default 0) acts before the
classifier.

Input sizes: any size with at least 2**(stages - 1) pixels per side (the
max-pools), e.g. 32x32 and 224x224.

Backbone use: `return_features=True` returns {'stage1'..}: each stage's last
highway layer output, before pooling (strides 1, 2, 4, ...).

Parameter names: `stage{s}_entry` (the plain conv), `stage{s}_highway{i}/{h,
t}` (the H and T convolutions), `classifier`.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, max_pool
from jaxcnn.registry import register_model

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class HighwayConv(nn.Module):
  """y = ReLU(conv_h(x)) * T + x * (1 - T),  T = sigmoid(conv_t(x)) with bias starting at `gate_bias_init`."""
  kernel_size: int = 3
  gate_bias_init: float = -1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, x.shape[-1], (self.kernel_size, self.kernel_size),
                             padding=(self.kernel_size - 1) // 2, dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.relu(conv(kernel_init=conv_init, name="h")(x))
    # The gate is a sigmoid: a small-variance init keeps it near sigmoid(gate_bias_init) at the start.
    t = nn.sigmoid(conv(kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                        bias_init=nn.initializers.constant(self.gate_bias_init), name="t")(x))
    return h * t + x * (1.0 - t)


class HighwayNet(nn.Module):
  """Stages of a plain width-changing conv plus highway layers, max-pools between (see module doc)."""
  widths: Sequence[int] = (32, 64, 128)
  layers_per_stage: int = 5
  kernel_size: int = 3
  gate_bias_init: float = -1.0
  dropout_rate: float = 0.0
  return_features: bool = False
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if not self.widths or any(int(w) < 1 for w in self.widths):
      raise UserError(f"widths={tuple(self.widths)} must be a non-empty list of positive channel counts")
    if self.layers_per_stage < 1:
      raise UserError(f"layers_per_stage={self.layers_per_stage} must be >= 1")
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise UserError(f"kernel_size={self.kernel_size} must be odd (highway layers keep the map size)")
    if self.gate_bias_init > 0:
      raise UserError(f"gate_bias_init={self.gate_bias_init} must be <= 0: a negative transform gate bias "
                      "makes layers start by carrying their input (the paper uses e.g. -1, -3)")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    needed = 2 ** (len(self.widths) - 1)
    if min(x.shape[1:3]) < needed:
      raise UserError(f"HighwayNet with {len(self.widths)} stages needs inputs of at least {needed}x{needed} "
                      f"pixels, got {x.shape[1]}x{x.shape[2]}")
    k = self.kernel_size
    features = {}
    for s, width in enumerate(self.widths, start=1):
      if s > 1:
        x = max_pool(x, 2, 2)
      x = nn.relu(Conv(width, (k, k), padding=(k - 1) // 2, kernel_init=conv_init, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"stage{s}_entry")(x))
      for i in range(self.layers_per_stage):
        x = HighwayConv(k, self.gate_bias_init, self.dtype, self.param_dtype, name=f"stage{s}_highway{i}")(x)
      features[f"stage{s}"] = x
    if self.return_features:
      return features
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="classifier")(x)


register_model("highway_net")(HighwayNet)
