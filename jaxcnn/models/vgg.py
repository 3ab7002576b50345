"""VGG (Simonyan & Zisserman 2015), configurations A, B, D, E, as torchvision builds them.

Five blocks of 3x3/1 convolutions (padding 1) with 64, 128, 256, 512, 512
channels, each followed by ReLU (with `batch_norm=True`: conv-BN-ReLU, the
`_bn` variants, which the paper does not have) and closed by a 2x2/2 max-pool;
then torchvision's adaptive average pool to 7x7 and the paper's classifier
fc4096-ReLU-dropout-fc4096-ReLU-dropout-fc. Registered:
  vgg11 (A, 132,863,336 parameters), vgg13 (B, 133,047,848),
  vgg16 (D, 138,357,544), vgg19 (E, 143,667,240), and vgg11_bn .. vgg19_bn.
The paper's configuration C (1x1 convs in the last three blocks) and the LRN
variant A-LRN are not provided (neither is in torchvision).

Input sizes: 32x32 and up (five 2x pools). At 32x32 the last map is 1x1 and
the adaptive pool repeats it to 7x7, exactly as torchvision does, so CIFAR
images run through the unchanged ImageNet classifier. `classifier_width`
(default 4096) sets the hidden fc width for smaller variants.

CIFAR variants (`cifar_head=True`; registered `vgg11_bn_cifar` .. `vgg19_bn_cifar`,
10 classes): the head of the common CIFAR VGG (kuangliu/pytorch-cifar
`models/vgg.py`): the last 512-channel map (1x1 at 32x32) goes straight
into one linear layer to the classes, no hidden fc layers and no dropout.
Here the map is averaged over space first, which at 32x32 is kuangliu's
flatten and lets other sizes run too. vgg16_bn_cifar has 14,728,266
parameters, kuangliu's VGG16 exactly (conv-BN-ReLU with conv biases, as here),
and vgg19_bn_cifar 20,040,522, the "20.04M" of bearpaw/pytorch-classification.

Backbone use: `return_features=True` returns {'stage1'..'stage5'}: each
block's last ReLU output before its max-pool (strides 1, 2, 4, 8, 16).
`ceil_mode_blocks` lists the blocks whose max-pool rounds its output size up
(torch's ceil_mode; SSD300 sets it on block 3 so 75 pixels pool to 38).

Parameter names: `block{b}_conv{i}` / `block{b}_bn{i}` (both from 1), `fc1`..`fc3`
(the CIFAR head: `fc`);
`jaxcnn.convert.vgg` maps torchvision's `features.<n>` / `classifier.{0,3,6}`.
Initialisation follows torchvision: Kaiming-normal (fan_out) convolutions,
N(0, 0.01) linear layers, zero biases.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, adaptive_avg_pool, max_pool
from jaxcnn.registry import register_model

STAGE_WIDTHS = (64, 128, 256, 512, 512)
# Convolutions per block of the paper's configurations (Table 1).
CONFIGS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """VGG with `stage_sizes[b]` 3x3 convolutions in block b (see module doc)."""
  stage_sizes: Sequence[int] = CONFIGS[16]
  batch_norm: bool = False
  dropout_rate: float = 0.5
  classifier_width: int = 4096
  cifar_head: bool = False         # True: global average pool + one linear layer (kuangliu's CIFAR VGG)
  ceil_mode_blocks: Sequence[int] = ()  # blocks (1..5) whose closing max-pool rounds up (SSD300: (3,))
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if len(self.stage_sizes) != len(STAGE_WIDTHS) or any(int(n) < 1 for n in self.stage_sizes):
      raise UserError(f"stage_sizes={tuple(self.stage_sizes)} must be 5 positive counts, "
                      f"e.g. {CONFIGS[16]} (VGG-16)")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    if any(b not in range(1, 6) for b in self.ceil_mode_blocks):
      raise UserError(f"ceil_mode_blocks={tuple(self.ceil_mode_blocks)} must name blocks among 1..5")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    if min(x.shape[1:3]) < 32:
      raise UserError(f"VGG needs inputs of at least 32x32 pixels (five 2x poolings), got {x.shape[1]}x{x.shape[2]}")
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=1, kernel_init=conv_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    features = {}
    for b, (num_convs, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS), start=1):
      for i in range(1, num_convs + 1):
        x = conv(width, name=f"block{b}_conv{i}")(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           axis_name=self.bn_axis_name, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f"block{b}_bn{i}")(x)
        x = nn.relu(x)
      features[f"stage{b}"] = x
      x = max_pool(x, 2, 2, ceil_mode=b in self.ceil_mode_blocks)
    if self.return_features:
      return features
    return self._classifier(x, train)

  def _classifier(self, x, train: bool):
    dense = functools.partial(nn.Dense, kernel_init=dense_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    if self.cifar_head:
      return dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))
    x = adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
    for i in (1, 2):
      x = nn.relu(dense(self.classifier_width, name=f"fc{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, name="fc3")(x)


for _depth, _sizes in CONFIGS.items():
  register_model(f"vgg{_depth}", stage_sizes=_sizes)(VGG)
  register_model(f"vgg{_depth}_bn", stage_sizes=_sizes, batch_norm=True)(VGG)
  register_model(f"vgg{_depth}_bn_cifar", stage_sizes=_sizes, batch_norm=True, cifar_head=True,
                 num_classes=10)(VGG)
