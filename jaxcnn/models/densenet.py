"""DenseNet-BC (Huang et al. 2017): torchvision's ImageNet models and the paper's CIFAR model.

Each dense layer is BN-ReLU-conv1x1 (bn_size * k channels) - BN-ReLU-conv3x3
(k = growth rate channels), and its output is concatenated to its input, so a
block of n layers adds n * k channels. Between blocks a transition
BN-ReLU-conv1x1-avgpool2x2 keeps floor(compression * channels); after the last
block a BN-ReLU, global average pooling and the classifier.

Registered (parameter counts at 1000 classes, equal to torchvision's):
  densenet121 (k=32, blocks 6-12-24-16, 7,978,856), densenet161 (k=48, 96 stem
  channels, 6-12-36-24, 28,681,000), densenet169 (6-12-32-32, 14,149,480),
  densenet201 (6-12-48-32, 20,013,928), densenet264 (6-12-64-48, the paper's
  Table 1; torchvision's `DenseNet` class with that configuration has
  33,337,704; not in torchvision's model list),
  densenet_bc_100_12: the paper's CIFAR DenseNet-BC (L=100, k=12): a 3x3 conv
  stem with 2k channels, three blocks of 16 layers, 10 classes; 769,162
  parameters (the paper's Table 2: 0.8M).
The ImageNet stem is conv7x7/2-BN-ReLU-maxpool3x3/2; the CIFAR stem
(`stem='cifar'`) is one 3x3 convolution, as in the paper.

Input sizes: ImageNet models run on 32x32 and up (the last map is 1x1 at 32x32),
CIFAR models on 8x8 and up; any size: the pooling is global.
`drop_rate` (torchvision's) is dropout after each layer's 3x3 conv.
`memory_efficient=True` recomputes the layers' activations in the backward
pass (`nn.remat`), as torchvision's option checkpoints them.

Backbone use: `return_features=True` returns {'stem', 'stage1'..}: the stem
after its conv (ImageNet: after BN-ReLU, before the max-pool; stride 2 or 1),
then each dense block's output (before its transition; strides 4, 8, 16, 32
or 1, 2, 4). The last stage includes the final BN-ReLU (`norm5` then ReLU,
what torchvision's forward pools and the classifier sees; what a DeepLab head
consumes); the others are raw concatenations, as is usual for pre-activation
nets.

Dense prediction: `output_stride` (ImageNet stem only) is 32 (the classifier,
unchanged), 16 or 8, the dilated DenseNet scheme: at 16 the last transition
keeps its BN-ReLU-conv but not its average pooling and the last dense block's
3x3 convolutions are dilated by 2; at 8 the last two transitions lose their
pooling and the last two blocks are dilated by 2 and 4 (blocks 3 and 4 of the
four-block models). The variables are the classifier's, name for name and
shape for shape, so ImageNet weights load unchanged; the feature strides
become 4, 8, 16, 16 (OS 16) or 4, 8, 8, 8 (OS 8).

Parameter names follow torchvision (`conv0`, `denseblock1/denselayer1/norm1`,
`transition1/conv`, `norm5`, `classifier`), so `jaxcnn.convert.densenet` maps
them one to one. Initialisation as torchvision: Kaiming-normal (fan_in)
convolutions, BN 1/0, zero classifier bias.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, max_pool
from jaxcnn.registry import register_model

ModuleDef = Callable[..., nn.Module]

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torch.nn.Linear's default kernel init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1 (bottleneck) - BN-ReLU-conv3x3 -> `growth_rate` new channels."""
  growth_rate: int
  bn_size: int
  drop_rate: float
  conv: ModuleDef
  norm: ModuleDef
  dilation: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(self.norm(name="norm1")(x))
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)
    y = nn.relu(self.norm(name="norm2")(y))
    d = self.dilation
    y = self.conv(self.growth_rate, (3, 3), padding=d, kernel_dilation=d, name="conv2")(y)
    if self.drop_rate > 0:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return y


class DenseBlock(nn.Module):
  """`num_layers` dense layers, each fed the concatenation of the input and all earlier outputs."""
  num_layers: int
  growth_rate: int
  bn_size: int
  drop_rate: float
  conv: ModuleDef
  norm: ModuleDef
  memory_efficient: bool = False
  dilation: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    # The rematerialised layer keeps `train` static (argument 2 counting self).
    layer = nn.remat(DenseLayer, static_argnums=(2,)) if self.memory_efficient else DenseLayer
    for i in range(1, self.num_layers + 1):
      new = layer(self.growth_rate, self.bn_size, self.drop_rate, self.conv, self.norm,
                  self.dilation, name=f"denselayer{i}")(x, train)
      x = jnp.concatenate([x, new], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-conv1x1 to `features` channels, then 2x2/2 average pooling (`pool=False`: none)."""
  features: int
  conv: ModuleDef
  norm: ModuleDef
  pool: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm(name="norm")(x))
    x = self.conv(self.features, (1, 1), name="conv")(x)
    return nn.avg_pool(x, (2, 2), (2, 2)) if self.pool else x


class DenseNet(nn.Module):
  """DenseNet-BC with `block_config[i]` layers in block i (see module doc)."""
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  drop_rate: float = 0.0
  stem: str = "imagenet"          # 'imagenet': conv7x7/2-BN-ReLU-maxpool; 'cifar': conv3x3
  memory_efficient: bool = False
  output_stride: int = 32         # 32 (classifier), 16 or 8: last transitions unpooled, blocks dilated
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.stem not in ("imagenet", "cifar"):
      raise UserError(f"stem={self.stem!r} is not supported (allowed: 'imagenet', 'cifar')")
    if not self.block_config or any(int(n) < 1 for n in self.block_config):
      raise UserError(f"block_config={tuple(self.block_config)} must be a non-empty list of positive layer counts")
    if min(self.growth_rate, self.bn_size, self.num_init_features) < 1:
      raise UserError("growth_rate, bn_size and num_init_features must be >= 1")
    if not 0.0 < self.compression <= 1.0:
      raise UserError(f"compression={self.compression} must be in (0, 1]")
    if not 0.0 <= self.drop_rate < 1.0:
      raise UserError(f"drop_rate={self.drop_rate} must be in [0, 1)")
    if self.output_stride not in (8, 16, 32):
      raise UserError(f"output_stride={self.output_stride!r} is not supported (allowed: 8, 16, 32)")
    if self.output_stride != 32 and self.stem != "imagenet":
      raise UserError(f"output_stride={self.output_stride} needs stem='imagenet' (the '{self.stem}' stem "
                      f"cannot dilate; allowed there: output_stride=32)")
    blocks_needed = {32: 1, 16: 2, 8: 3}[self.output_stride]
    if len(self.block_config) < blocks_needed:
      raise UserError(f"output_stride={self.output_stride} needs at least {blocks_needed} dense blocks "
                      f"(block_config={tuple(self.block_config)}; allowed: output_stride=32)")
    super().__post_init__()

  def _dilations(self):
    """Per block: (dilation of its 3x3 convs, whether the transition after it pools)."""
    n = len(self.block_config)
    unpooled = {32: 0, 16: 1, 8: 2}[self.output_stride]   # the last `unpooled` transitions lose their pooling
    dilation, plan = 1, []
    for i in range(n):
      pools = i < n - 1 - unpooled
      plan.append((dilation, pools))
      if i < n - 1 and not pools:
        dilation *= 2
    return plan

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name=self.bn_axis_name, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    features = {}
    if self.stem == "imagenet":
      x = conv(self.num_init_features, (7, 7), 2, padding=3, name="conv0")(x)
      x = nn.relu(norm(name="norm0")(x))
      features["stem"] = x
      x = max_pool(x, 3, 2, padding=1)
    else:
      x = conv(self.num_init_features, (3, 3), padding=1, name="conv0")(x)
      features["stem"] = x
    last = len(self.block_config)
    for i, (num_layers, (dilation, pools)) in enumerate(zip(self.block_config, self._dilations()), start=1):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.drop_rate, conv, norm,
                     self.memory_efficient, dilation, name=f"denseblock{i}")(x, train)
      features[f"stage{i}"] = x
      if i != last:
        x = Transition(int(x.shape[-1] * self.compression), conv, norm, pools,
                       name=f"transition{i}")(x)
    x = nn.relu(norm(name="norm5")(x))
    features[f"stage{last}"] = x
    if self.return_features:
      return features
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="classifier")(x)


def _register():
  variants = {
      "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
      "densenet161": dict(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96),
      "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
      "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64),
      "densenet264": dict(growth_rate=32, block_config=(6, 12, 64, 48), num_init_features=64),
      # L = 100 = 3 blocks * 16 layers * 2 convs + stem conv + 2 transition convs + classifier.
      "densenet_bc_100_12": dict(growth_rate=12, block_config=(16, 16, 16), num_init_features=24,
                                 stem="cifar", num_classes=10),
  }
  for name, kwargs in variants.items():
    register_model(name, **kwargs)(DenseNet)


_register()
