"""AlexNet (Krizhevsky et al. 2012) as torchvision lays it out, and ZFNet (Zeiler & Fergus 2013).

`alexnet`: torchvision's single-tower version ("One weird trick", Krizhevsky
2014: 64-192-384-256-256 channels, 61,100,840 parameters at 1000 classes):
five convolutions with ReLU, 3x3/2 max-pools after conv1, conv2 and conv5,
an adaptive average pool to 6x6, then dropout-fc4096-ReLU-dropout-fc4096-
ReLU-fc. `lrn=True` adds the paper's Local Response Normalization (k=2, n=5,
alpha=1e-4, beta=0.75; no parameters) after the ReLUs of conv1 and conv2,
before their max-pools (paper sec. 3.3-3.4); torchvision has none.

`zfnet`: AlexNet with ZFNet's changes (Zeiler & Fergus 2013, fig. 3): a 7x7/2
first convolution (instead of 11x11/4) with 96 filters, a 5x5/2 second one
with 256, 384-384-256 after, LRN after conv1 and conv2 ("contrast
normalization"), and 3x3/2 max-pools with rounded-up sizes, which give the
paper's 110-55-26-13-6 feature maps at 224x224. The same 6x6 adaptive pool and
classifier as `alexnet`. The paper's renormalisation of first-layer filters
whose RMS exceeds 0.1 is a training rule, not part of the model.

`alexnet_cifar`: the CIFAR AlexNet of bearpaw/pytorch-classification
(`models/cifar/alexnet.py`, 2,472,266 parameters at 10 classes, the "2.47M"
of its README): torchvision's five convolutions and widths with conv1 padded
by 5 (11x11/4: 32 -> 8), 2x2/2 max-pools after conv1, conv2 and conv5
(8 -> 4 -> 2 -> 1) and a single linear layer on the 256 channels; no LRN,
no hidden fc layers. The last map is averaged over space (at 32x32 it is
1x1, bearpaw's flatten), so inputs of 29x29 and up work. `dropout_rate`
(default 0 here, as bearpaw's) acts before the linear layer.

Input sizes: the ImageNet stems downsample by 32 with several unpadded pools, so the
smallest inputs are 63x63 (alexnet) and 47x47 (zfnet); smaller ones (e.g.
32x32 CIFAR images: upsample them) raise a UserError. Any larger size works:
the adaptive pool maps the last feature map to 6x6. `classifier_width`
(default 4096) sets the two hidden fc widths.

Backbone use: `return_features=True` returns a dict instead of logits, with
'stage1'..'stage5' = the outputs of conv1..conv5 after ReLU (and LRN), before
any pooling; strides 4, 8, 16, 16, 16 for alexnet and 2, 4, 8, 8, 8 for zfnet.

Parameter names: `conv1`..`conv5`, `fc1`..`fc3` (alexnet_cifar: `fc`); `jaxcnn.convert.alexnet` maps
torchvision's `features.{0,3,6,8,10}` / `classifier.{1,4,6}` onto them.
Initialisation is torch's default for these layers (uniform +-1/sqrt(fan_in)
kernels) with zero biases.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, LocalResponseNorm, adaptive_avg_pool, max_pool
from jaxcnn.registry import register_model

# torch.nn.Conv2d / Linear default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The paper's LRN constants; alpha is given per window as in torch / Caffe (see layers.norm).
PAPER_LRN = dict(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


def classifier_head(module, x, train: bool):
  """dropout-fc-ReLU-dropout-fc-ReLU-fc on the flattened 6x6 map (torchvision's order)."""
  hidden = module.classifier_width
  x = adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)
  dense = lambda n, name: nn.Dense(n, kernel_init=torch_default_init, dtype=module.dtype,
                                   param_dtype=module.param_dtype, name=name)
  x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
  x = nn.relu(dense(hidden, "fc1")(x))
  x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
  x = nn.relu(dense(hidden, "fc2")(x))
  return dense(module.num_classes, "fc3")(x)


class _AlexNetBase(nn.Module):
  """Five conv-ReLU layers, max-pools after the 1st, 2nd and 5th, the 6x6 pool and the MLP head."""
  num_classes: int = 1000
  dropout_rate: float = 0.5
  classifier_width: int = 4096
  lrn: bool = False
  return_features: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # (features, kernel, stride, padding) of conv1..conv5, the max-pool window (stride 2)
  # and whether the pools round up, and whether the head is one linear layer.
  convs = ()
  pool_window = 3
  ceil_mode_pools = False
  linear_head = False
  min_size = 0

  def __post_init__(self):
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    if min(x.shape[1:3]) < self.min_size:
      raise UserError(f"{type(self).__name__} needs inputs of at least {self.min_size}x{self.min_size} "
                      f"pixels, got {x.shape[1]}x{x.shape[2]}; resize the images")
    features = {}
    for i, (filters, kernel, stride, padding) in enumerate(self.convs, start=1):
      x = Conv(filters, (kernel, kernel), stride, padding=padding, kernel_init=torch_default_init,
               dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{i}")(x)
      x = nn.relu(x)
      if self.lrn and i <= 2:
        x = LocalResponseNorm(**PAPER_LRN, dtype=self.dtype)(x)
      features[f"stage{i}"] = x
      if i in (1, 2, 5):
        x = max_pool(x, self.pool_window, 2, ceil_mode=self.ceil_mode_pools)
    if self.return_features:
      return features
    if self.linear_head:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
      return nn.Dense(self.num_classes, kernel_init=torch_default_init, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="fc")(x)
    return classifier_head(self, x, train)


class AlexNet(_AlexNetBase):
  """torchvision's AlexNet; `lrn=True` adds the paper's LRN after conv1 and conv2."""
  convs = (
      (64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
  min_size = 63


class ZFNet(_AlexNetBase):
  """Zeiler & Fergus 2013: 7x7/2 conv1 (96), 5x5/2 conv2 (256), LRN, rounded-up pools."""
  lrn: bool = True
  convs = (
      (96, 7, 2, 1), (256, 5, 2, 0), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1))
  ceil_mode_pools = True
  min_size = 47


class AlexNetCIFAR(_AlexNetBase):
  """bearpaw/pytorch-classification's CIFAR AlexNet: conv1 padded by 5, 2x2/2 pools, one linear layer."""
  num_classes: int = 10
  dropout_rate: float = 0.0
  convs = (
      (64, 11, 4, 5), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
  pool_window = 2
  linear_head = True
  min_size = 29  # conv1 must leave 8x8 for the three 2x2 pools


register_model("alexnet")(AlexNet)
register_model("zfnet")(ZFNet)
register_model("alexnet_cifar")(AlexNetCIFAR)
