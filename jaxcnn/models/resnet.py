"""ResNet family: torchvision ImageNet ResNets and their ResNeXt, wide and
pre-activation variants, and the CIFAR ResNets.

Three model classes share four residual blocks:

* `ResNet`: the torchvision layout ("v1.5": a Bottleneck strides in its 3x3
  conv). Registered: `resnet18/34/50/101/152`, `wide_resnet50_2`,
  `wide_resnet101_2`, `resnext50_32x4d`, `resnext101_32x8d`,
  `resnext101_64x4d`, the pre-activation `preact_resnet18/34/50/101/152`
  (He et al. 2016, "Identity Mappings in Deep Residual Networks", laid out
  as fb.resnet.torch's preresnet.lua), and two with a CIFAR stem (3x3/1 conv,
  no max-pool): `resnet18_cifar` (the common CIFAR ResNet-18, 11.17M
  parameters) and `resnext29_8x64d` (Xie et al. 2017, sec. 5.3, 34.4M).
  Parameter names follow torchvision (`conv1`, `bn1`, `layer1_0/conv1`, ...,
  `fc`) so `jaxcnn.convert.resnet` maps its weights one to one.
* `CifarResNet`: He et al. 2015 sec. 4.2, 6n+2 layers in three stages of
  16/32/64 x `width` channels. Shortcut option 'A' (parameter-free: subsample
  and zero-pad the new channels, the paper's CIFAR choice) or 'B' (1x1 conv +
  BN projection where shapes change). Registered: `resnet20/32/44/56/110/1202`
  and `resnet_cifar` (set `depth` and `width` yourself).
* `WideResNet`: Zagoruyko & Komodakis 2016, pre-activation, 6n+4 layers, a
  16-channel stem and stages 16k/32k/64k, optional dropout between the two
  convolutions of a block. Registered: `wrn28_10` (36.5M parameters).

Backbone use: every model has a field `return_features` (default False).
When True, `__call__` returns a dict of feature maps instead of logits and
builds no classifier:
  'stem'    after the stem's conv(-BN-ReLU): stride 2 for the ImageNet stem
            (before its max-pool), stride 1 for the CIFAR stems;
  'stage1'.. one entry per stage, the output of its last block: strides
            4, 8, 16, 32 for the ImageNet layout, 1, 2, 4 for CIFAR.
In pre-activation models the last stage includes the final BN-ReLU (what
the classifier would see); every other map is a raw block output.

Dilation (dense prediction): `replace_stride_with_dilation` (torchvision's
option: three bools for stages 2-4) runs a stage at stride 1 and doubles the
dilation of the 3x3 convolutions from there on; as torchvision's
`_make_layer`, the first block of a dilated stage still uses the previous
dilation and the later blocks the new one. `output_stride` says the same
shortly: 8 -> (False, True, True), 16 -> (False, False, True), 32 -> no
dilation. Parameters are unchanged (dilation adds none), so classification
weights load into a dilated backbone as they are. CIFAR-stem models cannot
dilate (UserError).

Initialisation follows torchvision: convolutions Kaiming-normal (fan_out),
BN scale 1 / bias 0, the classifier uniform(+-1/sqrt(fan_in)) with zero bias.
`zero_init_residual=True` zeroes the last BN scale of every block (the last
conv kernel in pre-activation blocks, which end without a BN), so each block
starts as the identity (Goyal et al. 2017).
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, max_pool
from jaxcnn.layers.attention_blocks import ATTENTION_BLOCKS, make_attention
from jaxcnn.registry import register_model

ModuleDef = Callable[..., nn.Module]

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _last_bn(norm: ModuleDef, zero_init: bool, name: str) -> nn.Module:
  """The BN that closes a residual branch; zero scale makes the block start as identity."""
  if zero_init:
    return norm(name=name, scale_init=nn.initializers.zeros)
  return norm(name=name)


def _last_conv(conv: ModuleDef, zero_init: bool, *args, **kwargs) -> nn.Module:
  """The conv that closes a pre-activation branch (it has no BN after it)."""
  if zero_init:
    return conv(*args, kernel_init=nn.initializers.zeros, **kwargs)
  return conv(*args, **kwargs)


def zero_pad_shortcut(x: jnp.ndarray, filters: int, strides: int) -> jnp.ndarray:
  """Option A of He et al. 2015: subsample by `strides`, append zero channels up to `filters`.

  Like fb.resnet.torch's option A, the identity fills the first channels and
  the new ones are zeros, so the shortcut has no parameters.
  """
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, filters - x.shape[-1])))


def shortcut(x, filters: int, strides: int, kind: str, conv: ModuleDef,
             norm: Optional[ModuleDef] = None):
  """Brings `x` to the residual branch's shape; identity when it already has it.

  kind 'A' zero-pads (no parameters); 'B' projects with a 1x1 conv followed by
  a BN when `norm` is given (pre-activation blocks project without one).
  """
  if x.shape[-1] == filters and strides == 1:
    return x
  if kind == "A":
    return zero_pad_shortcut(x, filters, strides)
  x = conv(filters, (1, 1), strides, name="downsample_conv")(x)
  return norm(name="downsample_bn")(x) if norm is not None else x


class BasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str = "B"
  zero_init_residual: bool = False
  dropout: Optional[ModuleDef] = None  # between the two convs when given
  attn: Optional[ModuleDef] = None     # attention on the residual branch (SE, ECA, CBAM, GSoP): attn(channels, name=)
  dilation: int = 1                    # of both 3x3 convs (torchvision has none for this block)
  expansion = 1

  @nn.compact
  def __call__(self, x):
    d = self.dilation
    y = self.conv(self.filters, (3, 3), self.strides, padding=d, kernel_dilation=d, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    if self.dropout is not None:
      y = self.dropout()(y)
    y = self.conv(self.filters, (3, 3), padding=d, kernel_dilation=d, name="conv2")(y)
    y = _last_bn(self.norm, self.zero_init_residual, "bn2")(y)
    if self.attn is not None:
      y = self.attn(self.filters, name="se")(y)  # 'se' as timm names it, whatever the kind
    return nn.relu(y + shortcut(x, self.filters, self.strides, self.shortcut, self.conv, self.norm))


class Bottleneck(nn.Module):
  """1x1 reduce-BN-ReLU, 3x3(stride, groups)-BN-ReLU, 1x1 expand-BN, plus the shortcut, then ReLU.

  `filters` is torchvision's `planes`: the block outputs 4 * filters channels;
  `width` is the inner (grouped) width.
  """
  filters: int
  strides: int
  width: int
  conv: ModuleDef
  norm: ModuleDef
  groups: int = 1
  shortcut: str = "B"
  zero_init_residual: bool = False
  attn: Optional[ModuleDef] = None
  dilation: int = 1                    # of the 3x3 conv, as torchvision's Bottleneck
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.filters * self.expansion
    y = self.conv(self.width, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.width, (3, 3), self.strides, padding=self.dilation, kernel_dilation=self.dilation,
                  feature_group_count=self.groups, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out, (1, 1), name="conv3")(y)
    y = _last_bn(self.norm, self.zero_init_residual, "bn3")(y)
    if self.attn is not None:
      y = self.attn(out, name="se")(y)
    return nn.relu(y + shortcut(x, out, self.strides, self.shortcut, self.conv, self.norm))


class PreActBasicBlock(nn.Module):
  """Pre-activation unit: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus the shortcut.

  The first block of a stage feeds its shortcut from the pre-activated input
  (He et al. 2016 appendix: projections are pre-activated too); later blocks
  add the raw input. `activated_input`: the input already went through
  BN-ReLU (right after a conv-BN-ReLU stem), so `bn1` is skipped.
  """
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  first_in_stage: bool = False
  activated_input: bool = False
  shortcut: str = "B"
  zero_init_residual: bool = False
  dropout: Optional[ModuleDef] = None
  dilation: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x):
    d = self.dilation
    act = x if self.activated_input else nn.relu(self.norm(name="bn1")(x))
    y = self.conv(self.filters, (3, 3), self.strides, padding=d, kernel_dilation=d, name="conv1")(act)
    y = nn.relu(self.norm(name="bn2")(y))
    if self.dropout is not None:
      y = self.dropout()(y)
    y = _last_conv(self.conv, self.zero_init_residual, self.filters, (3, 3), padding=d, kernel_dilation=d,
                   name="conv2")(y)
    source = act if self.first_in_stage else x
    return y + shortcut(source, self.filters, self.strides, self.shortcut, self.conv)


class PreActBottleneck(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3(stride, groups), BN-ReLU-1x1, plus the shortcut."""
  filters: int
  strides: int
  width: int
  conv: ModuleDef
  norm: ModuleDef
  groups: int = 1
  first_in_stage: bool = False
  activated_input: bool = False
  shortcut: str = "B"
  zero_init_residual: bool = False
  dilation: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.filters * self.expansion
    act = x if self.activated_input else nn.relu(self.norm(name="bn1")(x))
    y = self.conv(self.width, (1, 1), name="conv1")(act)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.width, (3, 3), self.strides, padding=self.dilation, kernel_dilation=self.dilation,
                  feature_group_count=self.groups, name="conv2")(y)
    y = nn.relu(self.norm(name="bn3")(y))
    y = _last_conv(self.conv, self.zero_init_residual, out, (1, 1), name="conv3")(y)
    source = act if self.first_in_stage else x
    return y + shortcut(source, out, self.strides, self.shortcut, self.conv)


def _layers(module, train: bool):
  """The conv and BN constructors every block of `module` uses."""
  conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init,
                           dtype=module.dtype, param_dtype=module.param_dtype)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=module.dtype, param_dtype=module.param_dtype,
                           axis_name=module.bn_axis_name)
  return conv, norm


def _classifier(module, x):
  """Global average pool and the linear classifier."""
  x = jnp.mean(x, axis=(1, 2))
  return nn.Dense(module.num_classes, kernel_init=dense_init, dtype=module.dtype,
                  param_dtype=module.param_dtype, name="fc")(x)


def _check_choice(field: str, value, allowed):
  if value not in allowed:
    raise UserError(f"{field}={value!r} is not supported (allowed: {', '.join(map(repr, allowed))})")


class ResNet(nn.Module):
  """torchvision-layout ResNet / ResNeXt / wide ResNet, optionally pre-activation or with a CIFAR stem.

  Stage i (from 0) has `stage_sizes[i]` blocks of torchvision's planes
  64 * 2**i and strides 2 from the second stage on. A bottleneck's grouped
  3x3 conv is int(planes * width_per_group / 64) * groups wide.
  """
  stage_sizes: Sequence[int]
  block: str = "basic"            # 'basic' | 'bottleneck'
  groups: int = 1                 # ResNeXt cardinality
  width_per_group: int = 64       # 128 makes wide_resnet*_2
  preact: bool = False            # pre-activation blocks and a final BN-ReLU
  stem: str = "imagenet"          # 'imagenet': 7x7/2 conv + 3x3/2 max-pool; 'cifar': 3x3/1 conv
  attn: Optional[str] = None      # 'se' | 'eca' | 'cbam' | 'gsop' on the residual branch (timm attn_layer)
  attn_blocks: str = "all"        # 'all' blocks, or the 'last' block of each stage (GSoP-Net1)
  last_stage_strides: int = 2     # 1 keeps the last stage at 1/16 resolution (GSoP-Net1: 14x14 at 224)
  replace_stride_with_dilation: Optional[Sequence[bool]] = None  # stages 2.., torchvision's option
  output_stride: Optional[int] = None  # 8 | 16 | 32: shorthand for replace_stride_with_dilation
  zero_init_residual: bool = False
  return_features: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    _check_choice("block", self.block, ("basic", "bottleneck"))
    _check_choice("stem", self.stem, ("imagenet", "cifar"))
    _check_attn(self)
    _check_choice("attn_blocks", self.attn_blocks, ("all", "last"))
    _check_choice("last_stage_strides", self.last_stage_strides, (1, 2))
    if not self.stage_sizes or any(int(n) < 1 for n in self.stage_sizes):
      raise UserError(f"stage_sizes={tuple(self.stage_sizes)} must be a non-empty list of positive block counts")
    if self.block == "basic" and (self.groups != 1 or self.width_per_group != 64):
      raise UserError("block='basic' supports only groups=1 and width_per_group=64 "
                      "(use block='bottleneck' for ResNeXt / wide ResNets)")
    if self.groups < 1 or self.width_per_group < 1:
      raise UserError(f"groups={self.groups} and width_per_group={self.width_per_group} must be >= 1")
    self._dilations()  # validates the dilation options
    super().__post_init__()

  def _replace_with_dilation(self) -> tuple:
    """One bool per stage after the first: that stage trades its stride for dilation."""
    later = len(self.stage_sizes) - 1
    if self.replace_stride_with_dilation is None and self.output_stride is None:
      return (False,) * later
    if self.stem != "imagenet":
      raise UserError(f"a ResNet with stem={self.stem!r} cannot dilate (its stages run at strides 1, 2, 4); "
                      "replace_stride_with_dilation / output_stride need stem='imagenet'")
    if self.last_stage_strides != 2:
      raise UserError("replace_stride_with_dilation / output_stride need last_stage_strides=2 "
                      f"(got {self.last_stage_strides})")
    if self.output_stride is not None:
      if self.replace_stride_with_dilation is not None:
        raise UserError("give either output_stride or replace_stride_with_dilation, not both")
      if len(self.stage_sizes) != 4:
        raise UserError(f"output_stride needs the four-stage ImageNet layout (got {len(self.stage_sizes)} stages)")
      allowed = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
      if self.output_stride not in allowed:
        raise UserError(f"output_stride={self.output_stride!r} is not supported (allowed: 8, 16, 32)")
      return allowed[self.output_stride]
    replace = tuple(self.replace_stride_with_dilation)
    if len(replace) != later or not all(isinstance(r, (bool, np.bool_)) for r in replace):
      raise UserError(f"replace_stride_with_dilation={replace} must be {later} bools "
                      f"(one per stage after the first), e.g. {(False,) * (later - 1) + (True,)}")
    return tuple(bool(r) for r in replace)

  def _dilations(self) -> list:
    """Per stage: (strides, dilation of its first block, dilation of the others)."""
    replace = self._replace_with_dilation()
    dilation, plan = 1, []
    for stage in range(len(self.stage_sizes)):
      strides = 1 if stage == 0 else (self.last_stage_strides if stage == len(self.stage_sizes) - 1 else 2)
      previous = dilation
      if stage > 0 and replace[stage - 1]:
        dilation, strides = dilation * strides, 1
      plan.append((strides, previous, dilation))
    return plan

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = _layers(self, train)
    features = {}
    x = self._stem(x, conv, norm, features)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self._block(i, j, conv, norm)(x)
      features[f"stage{i + 1}"] = x
    if self.preact:
      x = nn.relu(norm(name="final_bn")(x))
      features[f"stage{len(self.stage_sizes)}"] = x
    if self.return_features:
      return features
    return _classifier(self, x)

  def _stem(self, x, conv, norm, features):
    """conv-BN-ReLU (7x7/2 or 3x3/1), then the 3x3/2 max-pool of the ImageNet stem."""
    if self.stem == "imagenet":
      x = conv(64, (7, 7), 2, padding=3, name="conv1")(x)
    else:
      x = conv(64, (3, 3), 1, padding=1, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    features["stem"] = x
    if self.stem == "imagenet":
      x = max_pool(x, 3, 2, padding=1)
    return x

  def _block(self, stage: int, index: int, conv, norm) -> nn.Module:
    """Block `index` of stage `stage`, named like torchvision's `layer{stage+1}.{index}`."""
    stage_strides, first_dilation, dilation = self._dilations()[stage]
    kwargs = dict(filters=64 * 2**stage, strides=stage_strides if index == 0 else 1,
                  dilation=first_dilation if index == 0 else dilation,
                  conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
                  name=f"layer{stage + 1}_{index}")
    if self.block == "bottleneck":
      kwargs.update(width=int(kwargs["filters"] * self.width_per_group / 64) * self.groups,
                    groups=self.groups)
    if not self.preact:
      attn = _attention(self, norm)
      if self.attn_blocks == "last" and index < self.stage_sizes[stage] - 1:
        attn = None
      elif attn is not None and self.attn == "gsop" and stage == 0:
        attn = functools.partial(attn, reduce_strides=2)  # the authors' cheaper covariance at 56x56
      return (Bottleneck if self.block == "bottleneck" else BasicBlock)(attn=attn, **kwargs)
    # The stem ends in BN-ReLU, so the very first unit takes an activated input.
    kwargs.update(first_in_stage=index == 0, activated_input=stage == 0 and index == 0)
    return (PreActBottleneck if self.block == "bottleneck" else PreActBasicBlock)(**kwargs)


class CifarResNet(nn.Module):
  """He et al. 2015 sec. 4.2 CIFAR ResNet: 3x3 stem, three stages of n BasicBlocks, depth 6n+2.

  Stage widths are round(16 * width), round(32 * width), round(64 * width);
  the stem has `stem_channels` (default: the first stage's width). With
  `preact=True` the blocks are pre-activation units and the stem is a bare
  conv (He et al. 2016's CIFAR ResNets).
  """
  depth: int = 20
  width: float = 1.0
  stem_channels: Optional[int] = None
  shortcut: str = "A"             # 'A': zero-padding identity; 'B': projection where shapes change
  preact: bool = False
  dropout_rate: float = 0.0       # inside each block, between its two convs
  attn: Optional[str] = None      # 'se' | 'eca' | 'cbam' | 'gsop' (post-activation blocks only)
  zero_init_residual: bool = False
  return_features: bool = False
  num_classes: int = 10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  # depth = layers_per_block * n * 3 + extra; WideResNet counts its two projection convs.
  depth_extra = 2

  def __post_init__(self):
    _check_choice("shortcut", self.shortcut, ("A", "B"))
    _check_attn(self)
    n, rest = divmod(self.depth - self.depth_extra, 6)
    if n < 1 or rest:
      raise UserError(f"depth={self.depth} is not allowed: {type(self).__name__} needs depth = 6n + "
                      f"{self.depth_extra} with n >= 1 (e.g. {6 + self.depth_extra}, {18 + self.depth_extra})")
    if not self.width > 0 or round(16 * self.width) < 1:
      raise UserError(f"width={self.width} must be positive and leave at least one channel (16 * width >= 0.5)")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    if self.shortcut == "A" and self._stem_channels() > self._stage_width(0):
      raise UserError(f"shortcut='A' cannot zero-pad {self._stem_channels()} stem channels down to "
                      f"{self._stage_width(0)}; use shortcut='B' or stem_channels <= {self._stage_width(0)}")
    super().__post_init__()

  def _stage_width(self, stage: int) -> int:
    return int(round(16 * 2**stage * self.width))

  def _stem_channels(self) -> int:
    return self.stem_channels if self.stem_channels is not None else self._stage_width(0)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = _layers(self, train)
    dropout = None
    if self.dropout_rate > 0:
      dropout = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)
    x = conv(self._stem_channels(), (3, 3), padding=1, name="conv1")(x)
    if not self.preact:
      x = nn.relu(norm(name="bn1")(x))
    features = {"stem": x}
    blocks_per_stage = (self.depth - self.depth_extra) // 6
    for stage in range(3):
      for index in range(blocks_per_stage):
        kwargs = dict(filters=self._stage_width(stage), strides=2 if stage > 0 and index == 0 else 1,
                      conv=conv, norm=norm, shortcut=self.shortcut, dropout=dropout,
                      zero_init_residual=self.zero_init_residual, name=f"layer{stage + 1}_{index}")
        if self.preact:
          x = PreActBasicBlock(first_in_stage=index == 0, **kwargs)(x)
        else:
          x = BasicBlock(attn=_attention(self, norm), **kwargs)(x)
      features[f"stage{stage + 1}"] = x
    if self.preact:
      x = nn.relu(norm(name="final_bn")(x))
      features["stage3"] = x
    if self.return_features:
      return features
    return _classifier(self, x)


class WideResNet(CifarResNet):
  """Zagoruyko & Komodakis 2016 WRN-depth-width: pre-activation, depth 6n+4, 16-channel stem.

  Stages have 16 * width, 32 * width, 64 * width channels; where the channel
  count changes the shortcut is a 1x1 conv (no BN) on the pre-activated input.
  `dropout_rate` (the paper uses 0.3 for its dropout runs) acts between the
  two convolutions of each block.
  """
  depth: int = 28
  width: float = 10.0
  stem_channels: Optional[int] = 16
  shortcut: str = "B"
  preact: bool = True

  depth_extra = 4


def _check_attn(model):
  if model.attn not in (None, "none"):
    _check_choice("attn", model.attn, tuple(ATTENTION_BLOCKS))
    if model.preact:
      raise UserError("attn is supported on post-activation blocks only (preact=False)")


def _attention(model, norm) -> Optional[ModuleDef]:
  """The block factory for `model.attn`; blocks with BatchNorm share the model's train/eval norm."""
  if model.attn in (None, "none"):
    return None
  return functools.partial(make_attention, model.attn, norm=norm, dtype=model.dtype, param_dtype=model.param_dtype)


def _register():
  imagenet = {
      "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
      "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
      "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
      "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
      "resnet152": dict(stage_sizes=(3, 8, 36, 3), block="bottleneck"),
  }
  variants = {
      **imagenet,
      "wide_resnet50_2": dict(imagenet["resnet50"], width_per_group=128),
      "wide_resnet101_2": dict(imagenet["resnet101"], width_per_group=128),
      "resnext50_32x4d": dict(imagenet["resnet50"], groups=32, width_per_group=4),
      "resnext101_32x8d": dict(imagenet["resnet101"], groups=32, width_per_group=8),
      "resnext101_64x4d": dict(imagenet["resnet101"], groups=64, width_per_group=4),
      **{f"preact_{name}": dict(kw, preact=True) for name, kw in imagenet.items()},
      "resnet18_cifar": dict(imagenet["resnet18"], stem="cifar", num_classes=10),
      # Attention-augmented (Hu et al. 2018; Wang et al. 2020; Woo et al. 2018), as timm's seresnet50 etc.
      "se_resnet18": dict(imagenet["resnet18"], attn="se"),
      "se_resnet50": dict(imagenet["resnet50"], attn="se"),
      "eca_resnet50": dict(imagenet["resnet50"], attn="eca"),
      "cbam_resnet50": dict(imagenet["resnet50"], attn="cbam"),
      # GSoP-Net1 (Gao et al. 2019) as the authors' code builds it: GSoP (d=128) in the last
      # block of each stage, last stage at stride 1 (14x14 at 224): 28.29M parameters.
      "gsop_resnet50": dict(imagenet["resnet50"], attn="gsop", attn_blocks="last", last_stage_strides=1),
      "resnext29_8x64d": dict(stage_sizes=(3, 3, 3), block="bottleneck", groups=8,
                              width_per_group=64, stem="cifar", num_classes=10),
  }
  for name, kwargs in variants.items():
    register_model(name, **kwargs)(ResNet)
  for depth in (20, 32, 44, 56, 110, 1202):
    register_model(f"resnet{depth}", depth=depth)(CifarResNet)
  register_model("resnet_cifar")(CifarResNet)
  register_model("wrn28_10", depth=28, width=10)(WideResNet)


_register()
