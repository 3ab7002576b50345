"""BiFPN (Tan, Pang, Le 2020, "EfficientDet: Scalable and Efficient Object Detection"), NHWC.

`BiFPN(features, num_cells, num_levels)(inputs, train)` takes backbone maps lowest level (highest
resolution) first, adds the missing coarser levels, runs `num_cells` BiFPN cells and returns
`num_levels` maps of `features` channels, lowest level first. As the official TF code
(google/automl efficientdet) and its port `effdet` (Ross Wightman) build it:

  extra levels     `resample_<l>`: from the last map, a 1x1 conv (+ bias) + BN to `features` channels
                   when the channels differ, then a max pool down to the next size
  cell             `cell_<r>`, the BiFPN graph (`bifpn_nodes`): top-down nodes td_l for levels L-2..0
                   fusing [P_l, td_{l+1}] (td_{L-1} = P_{L-1}), then bottom-up nodes for levels 1..L-1
                   fusing [P_l, td_l, out_{l-1}] ([P_{L-1}, out_{L-2}] at the top; out_0 = td_0); the
                   cell returns out_0..out_{L-1}
  node             `cell_<r>/node_<j>`: every input resampled to the node's size (`resample_<input
                   index>`: 1x1 conv + BN where its channels differ, i.e. backbone maps in the first
                   cell; a max pool of
                   kernel stride + 1, stride (in - 1) // out + 1 when it is larger, nearest upsampling
                   to the exact size when smaller), fused by `weight_method`:
                     'fastattn'  fast normalised fusion sum_i relu(w_i) x_i / (sum_j relu(w_j) + 1e-4),
                                 w = `edge_weights` (one per input, init 1): D0-D5
                     'attn'      softmax(w)-weighted sum
                     'sum'       plain sum (no weights): D6, D7 ("unweighted sum for stability")
                   then swish, then a depthwise-separable 3x3 conv (`conv/conv_dw`, no bias;
                   `conv/conv_pw` 1x1, bias when `redundant_bias`) + BN (`conv/bn`), no activation
Sizes: level l+1 is ceil(size_l / 2) (TF 'SAME' stride-2 output), so every size follows from the input
maps; a node whose resampled input does not come out at its size (an image too small for the
pyramid) is a UserError. Upsampling follows PyTorch's F.interpolate(size=..., mode='nearest')
(source index floor(dst * in / out)), effdet's choice; TF's resize of the official code picks the
same pixels whenever the size doubles exactly (every official image size).
Padding: `tf_padding=True` (official) pads the max pools as TF 'SAME' (-inf, more at the bottom/right);
False pads both sides by ((s - 1) + (k - 1)) // 2, timm's symmetric rule (effdet's PyTorch-native
models). 3x3 stride-1 convolutions pad 1 either way.
BatchNorm: TF's momentum 0.99 (flax convention; torch 0.01) and epsilon 1e-3.
Initialisation as effdet's `_init_weight` (TF's defaults): Glorot-uniform convolutions (the depthwise
kernel's fans are both k*k), zero biases.
"""
from typing import Any, Callable, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers.conv import Conv
from jaxcnn.layers.fpn import upsample_nearest

WEIGHT_METHODS = ("fastattn", "attn", "sum")
glorot_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def depthwise_init(scale: float, distribution: str):
  """Variance scaling (`distribution` 'uniform' or 'normal') of a depthwise HWIO kernel (k, k, 1, C), whose
  fan-in and fan-out are both k * k as effdet counts them (flax would count fan-out k * k * C)."""
  def init(key, shape, dtype=jnp.float32):
    variance = scale / max(1.0, float(np.prod(shape[:2])))
    if distribution == "uniform":
      limit = np.sqrt(3.0 * variance)
      return jax.random.uniform(key, shape, dtype, -limit, limit)
    return jax.random.normal(key, shape, dtype) * np.sqrt(variance)
  return init


def bifpn_nodes(num_levels: int) -> Tuple[Tuple[int, Tuple[int, ...]], ...]:
  """(level, input indices) of each node of a BiFPN cell over `num_levels` inputs (index i < num_levels is
  input level i, index num_levels + j is node j), google/automl's `bifpn_config`."""
  last = {level: [level] for level in range(num_levels)}
  nodes, next_id = [], num_levels
  for level in range(num_levels - 2, -1, -1):           # top-down
    nodes.append((level, (last[level][-1], last[level + 1][-1])))
    last[level].append(next_id)
    next_id += 1
  for level in range(1, num_levels):                    # bottom-up
    nodes.append((level, tuple(last[level]) + (last[level - 1][-1],)))
    last[level].append(next_id)
    next_id += 1
  return tuple(nodes)


def _pool_padding(kernel, stride, tf_padding: bool):
  if tf_padding:
    return "SAME"
  return tuple((((s - 1) + (k - 1)) // 2,) * 2 for k, s in zip(kernel, stride))


def _batch_norm(train, bn_momentum, bn_epsilon, bn_axis_name, dtype, param_dtype, name="bn"):
  return nn.BatchNorm(use_running_average=not train, momentum=bn_momentum, epsilon=bn_epsilon,
                      axis_name=bn_axis_name, dtype=dtype, param_dtype=param_dtype, name=name)


class SeparableConv(nn.Module):
  """Depthwise k x k conv (`conv_dw`, no bias) -> pointwise 1x1 conv (`conv_pw`) -> optional BN (`bn`) -> act."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  norm: bool = True
  activation: Optional[Callable] = None
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  dw_init: Callable = depthwise_init(1.0, "uniform")
  pw_init: Callable = glorot_uniform
  bias_init: Callable = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k, channels = self.kernel_size, x.shape[-1]
    x = Conv(channels, (k, k), padding=(k - 1) // 2, feature_group_count=channels, use_bias=False,
             kernel_init=self.dw_init, dtype=self.dtype, param_dtype=self.param_dtype, name="conv_dw")(x)
    x = Conv(self.features, (1, 1), use_bias=self.use_bias, kernel_init=self.pw_init, bias_init=self.bias_init,
             dtype=self.dtype, param_dtype=self.param_dtype, name="conv_pw")(x)
    if self.norm:
      x = _batch_norm(train, self.bn_momentum, self.bn_epsilon, self.bn_axis_name, self.dtype, self.param_dtype)(x)
    return x if self.activation is None else self.activation(x)


class Resample(nn.Module):
  """A map to `features` channels (1x1 conv + BN if they differ) and to `output_size` (max pool / nearest)."""
  features: int
  output_size: Tuple[int, int]
  apply_bn: bool = True
  conv_bias: bool = True
  tf_padding: bool = True
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), use_bias=self.conv_bias or not self.apply_bn, kernel_init=glorot_uniform,
               dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
      if self.apply_bn:
        x = _batch_norm(train, self.bn_momentum, self.bn_epsilon, self.bn_axis_name, self.dtype, self.param_dtype)(x)
    (h, w), (oh, ow) = x.shape[1:3], tuple(self.output_size)
    if h > oh and w > ow:
      stride = ((h - 1) // oh + 1, (w - 1) // ow + 1)
      kernel = (stride[0] + 1, stride[1] + 1)
      x = nn.max_pool(x, kernel, stride, padding=_pool_padding(kernel, stride, self.tf_padding))
    elif h < oh or w < ow:
      x = upsample_nearest(x, (oh, ow))
    if tuple(x.shape[1:3]) != (oh, ow):
      raise UserError(f"BiFPN: a {h}x{w} map cannot be resampled to {oh}x{ow}; the input image is too small "
                      "or too elongated for the pyramid's levels")
    return x


class FusionNode(nn.Module):
  """One BiFPN node: inputs resampled (`resample_<input index>`), fused (`edge_weights`), swish, `conv`."""
  features: int
  size: Tuple[int, int]
  offsets: Tuple[int, ...]
  weight_method: str = "fastattn"
  tf_padding: bool = True
  redundant_bias: bool = True
  apply_resample_bn: bool = True
  activation: Callable = nn.silu
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes: Sequence[jax.Array], train: bool = False) -> jax.Array:
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_axis_name=self.bn_axis_name,
              dtype=self.dtype, param_dtype=self.param_dtype)
    xs = [Resample(self.features, self.size, apply_bn=self.apply_resample_bn, conv_bias=self.redundant_bias,
                   tf_padding=self.tf_padding, name=f"resample_{i}", **bn)(nodes[i], train) for i in self.offsets]
    if self.weight_method == "sum":
      out = sum(xs[1:], xs[0])
    else:
      weights = self.param("edge_weights", nn.initializers.ones, (len(xs),), self.param_dtype).astype(xs[0].dtype)
      if self.weight_method == "fastattn":
        weights = nn.relu(weights)
        total = jnp.sum(weights) + 1e-4
        out = sum(x * weights[i] / total for i, x in enumerate(xs))
      else:
        weights = jax.nn.softmax(weights)
        out = sum(x * weights[i] for i, x in enumerate(xs))
    return SeparableConv(self.features, 3, use_bias=self.redundant_bias, norm=True, name="conv",
                         **bn)(self.activation(out), train)


class BiFPNCell(nn.Module):
  """One BiFPN cell (see module doc): nodes `node_<j>` in `bifpn_nodes` order."""
  features: int
  sizes: Tuple[Tuple[int, int], ...]
  weight_method: str = "fastattn"
  tf_padding: bool = True
  redundant_bias: bool = True
  apply_resample_bn: bool = True
  activation: Callable = nn.silu
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], train: bool = False) -> List[jax.Array]:
    num_levels = len(inputs)
    nodes = list(inputs)
    for j, (level, offsets) in enumerate(bifpn_nodes(num_levels)):
      nodes.append(FusionNode(self.features, self.sizes[level], offsets, weight_method=self.weight_method,
                              tf_padding=self.tf_padding, redundant_bias=self.redundant_bias,
                              apply_resample_bn=self.apply_resample_bn, activation=self.activation,
                              bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                              bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                              name=f"node_{j}")(nodes, train))
    return nodes[-num_levels:]


class BiFPN(nn.Module):
  """Extra levels from the last input, then `num_cells` BiFPN cells `cell_<r>` (see module doc)."""
  features: int
  num_cells: int
  num_levels: int = 5
  weight_method: str = "fastattn"
  tf_padding: bool = True
  redundant_bias: bool = True
  apply_resample_bn: bool = True
  activation: Callable = nn.silu
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.weight_method not in WEIGHT_METHODS:
      raise unknown("weight_method", self.weight_method, WEIGHT_METHODS)
    if self.features < 1 or self.num_cells < 1 or self.num_levels < 2:
      raise UserError(f"BiFPN needs features >= 1 (got {self.features}), num_cells >= 1 (got {self.num_cells}) "
                      f"and num_levels >= 2 (got {self.num_levels})")
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], train: bool = False) -> List[jax.Array]:
    if not 1 <= len(inputs) <= self.num_levels:
      raise UserError(f"BiFPN with num_levels={self.num_levels} takes 1..{self.num_levels} input maps, "
                      f"got {len(inputs)}")
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_axis_name=self.bn_axis_name,
              dtype=self.dtype, param_dtype=self.param_dtype)
    sizes = [tuple(x.shape[1:3]) for x in inputs]
    while len(sizes) < self.num_levels:
      sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    x = list(inputs)
    for level in range(len(inputs), self.num_levels):
      x.append(Resample(self.features, sizes[level], apply_bn=self.apply_resample_bn, conv_bias=self.redundant_bias,
                        tf_padding=self.tf_padding, name=f"resample_{level}", **bn)(x[-1], train))
    for r in range(self.num_cells):
      x = BiFPNCell(self.features, tuple(sizes), weight_method=self.weight_method, tf_padding=self.tf_padding,
                    redundant_bias=self.redundant_bias, apply_resample_bn=self.apply_resample_bn,
                    activation=self.activation, name=f"cell_{r}", **bn)(x, train)
    return x
