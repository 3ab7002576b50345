"""GoogLeNet / Inception v1 (Szegedy et al. 2015) as torchvision builds it.

Stem conv7x7/2 - maxpool - conv1x1 - conv3x3 - maxpool, then nine Inception
modules (3a, 3b, pool, 4a-4e, pool, 5a, 5b; the paper's Table 1 widths),
global average pooling, dropout 0.4 in the paper / 0.2 in torchvision (the
default here), and the classifier. An Inception module concatenates four
branches: 1x1; 1x1 -> 3x3; 1x1 -> "5x5"; 3x3/1 max-pool -> 1x1.

As torchvision: every convolution is conv-BN(eps 1e-3)-ReLU (BatchNorm is
not in the 2015 paper), max-pools round their output size up, and the "5x5"
branch uses a 3x3 kernel, a long-standing torchvision quirk its published
weights depend on (pytorch/vision#906). `branch3_kernel=5` gives the paper's
5x5. 6,624,904 parameters at 1000 classes without auxiliary heads, as
torchvision's `googlenet(aux_logits=False)`.

Auxiliary classifiers (`aux_logits=True`, 13,004,888 parameters as
torchvision's default): after inception 4a and 4d, adaptive average pooling
to 4x4, conv1x1 to 128 (+BN-ReLU), fc1024-ReLU-dropout(0.7)-fc. They run
only in training (and at init, to create their parameters); then
`__call__` returns `GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`,
torchvision's order. The paper weights each auxiliary loss by 0.3: the
classification task trains on main + `train.aux_loss_weight` (default 0.3)
x (aux1 + aux2). In eval the model returns plain logits either way.

`transform_input=True` maps inputs normalised with the ImageNet mean/std to
the (x - 0.5) / 0.5 normalisation the original weights expect (torchvision
sets it when loading its pretrained weights).

Input sizes: 15x15 and up (torchvision's minimum), e.g. 32x32 and 224x224.

Backbone use: `return_features=True` returns {'stem': conv1 output (stride 2),
'stage1': conv3 (stride 4), 'stage2': inception3b (8), 'stage3': inception4e
(16), 'stage4': inception5b (32)}.

Parameter names: `conv1`..`conv3`, `inception3a/{branch1, branch2_reduce,
branch2, branch3_reduce, branch3, branch4_proj}`, `aux1|aux2/{conv, fc1, fc2}`,
`fc`; every conv unit is a `layers.ConvBNAct` (`conv`, `bn`).
`jaxcnn.convert.googlenet` maps torchvision's names. Initialisation as
torchvision: N(0, 0.01) for convolutions and linear layers.
"""
import collections
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import adaptive_avg_pool, max_pool
from jaxcnn.layers.conv_norm import ConvBNAct
from jaxcnn.registry import register_model

GoogLeNetOutputs = collections.namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

# torchvision: trunc_normal_(std=0.01, a=-2, b=2), whose bounds are 200 std away: a plain normal.
weight_init = nn.initializers.normal(0.01)

# Paper Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


class Inception(nn.Module):
  """Four parallel branches concatenated on the channel axis."""
  widths: tuple
  branch3_kernel: int
  unit: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    c1, c3_reduce, c3, c5_reduce, c5, pool_proj = self.widths
    b1 = self.unit(c1, 1, name="branch1")(x, train)
    b2 = self.unit(c3_reduce, 1, name="branch2_reduce")(x, train)
    b2 = self.unit(c3, 3, name="branch2")(b2, train)
    b3 = self.unit(c5_reduce, 1, name="branch3_reduce")(x, train)
    b3 = self.unit(c5, self.branch3_kernel, name="branch3")(b3, train)
    b4 = max_pool(x, 3, 1, padding=1, ceil_mode=True)
    b4 = self.unit(pool_proj, 1, name="branch4_proj")(b4, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary classifier: 4x4 average pool, conv1x1-128, fc1024-ReLU-dropout, fc."""
  num_classes: int
  dropout_rate: float
  unit: Any
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=weight_init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.unit(128, 1, name="conv")(adaptive_avg_pool(x, 4), train)
    x = nn.relu(dense(1024, name="fc1")(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, name="fc2")(x)


class GoogLeNet(nn.Module):
  """torchvision's GoogLeNet (see module doc)."""
  aux_logits: bool = False
  transform_input: bool = False
  branch3_kernel: int = 3
  dropout_rate: float = 0.2
  aux_dropout_rate: float = 0.7
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.branch3_kernel not in (3, 5):
      raise UserError(f"branch3_kernel={self.branch3_kernel} is not supported "
                      "(allowed: 3 as torchvision, 5 as the paper)")
    for field in ("dropout_rate", "aux_dropout_rate"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise UserError(f"{field}={getattr(self, field)} must be in [0, 1)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(ConvBNAct, bn_epsilon=1e-3, bn_axis_name=self.bn_axis_name, kernel_init=weight_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    inception = functools.partial(Inception, branch3_kernel=self.branch3_kernel, unit=unit)
    aux = functools.partial(InceptionAux, self.num_classes, self.aux_dropout_rate, unit, self.dtype,
                            self.param_dtype)
    # The aux heads run in training; at init too, so that their parameters exist.
    run_aux = self.aux_logits and (train or self.is_initializing()) and not self.return_features
    if self.transform_input:
      x = self._transform_input(x)

    x = unit(64, 7, 2, name="conv1")(x, train)
    features = {"stem": x}
    x = max_pool(x, 3, 2, ceil_mode=True)
    x = unit(64, 1, name="conv2")(x, train)
    x = unit(192, 3, name="conv3")(x, train)
    features["stage1"] = x
    x = max_pool(x, 3, 2, ceil_mode=True)
    x = inception(INCEPTION["3a"], name="inception3a")(x, train)
    x = inception(INCEPTION["3b"], name="inception3b")(x, train)
    features["stage2"] = x
    x = max_pool(x, 3, 2, ceil_mode=True)
    x = inception(INCEPTION["4a"], name="inception4a")(x, train)
    aux1 = aux(name="aux1")(x, train) if run_aux else None
    for name in ("4b", "4c", "4d"):
      x = inception(INCEPTION[name], name=f"inception{name}")(x, train)
    aux2 = aux(name="aux2")(x, train) if run_aux else None
    x = inception(INCEPTION["4e"], name="inception4e")(x, train)
    features["stage3"] = x
    x = max_pool(x, 2, 2, ceil_mode=True)
    x = inception(INCEPTION["5a"], name="inception5a")(x, train)
    x = inception(INCEPTION["5b"], name="inception5b")(x, train)
    features["stage4"] = x
    if self.return_features:
      return features

    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, kernel_init=weight_init, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="fc")(x)
    if run_aux and train:
      return GoogLeNetOutputs(logits, aux2, aux1)
    return logits

  @staticmethod
  def _transform_input(x):
    """ImageNet mean/std normalisation -> (x - 0.5) / 0.5, per RGB channel (torchvision)."""
    mean = jnp.array([0.485, 0.456, 0.406], x.dtype)
    std = jnp.array([0.229, 0.224, 0.225], x.dtype)
    return x * (std / 0.5) + (mean - 0.5) / 0.5


register_model("googlenet")(GoogLeNet)
