"""LeNet-5: the 1998 original and a modern ReLU / max-pool rewrite.

`lenet5` follows LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning
applied to document recognition", section II-B:
  C1  6 @ 5x5 convolution                          32x32 -> 28x28   156 params (1 channel)
  S2  2x2 sum * coefficient + bias per map, squash  -> 14x14         12
  C3  16 @ 5x5 over the S2 maps of Table I          -> 10x10         1,516
  S4  as S2                                          -> 5x5          32
  C5  120 @ 5x5 convolution                          -> 1x1          48,120
  F6  84 units                                                       10,164
  output: 10 Euclidean RBF units with fixed +-1 codes                0 trainable
for exactly 60,000 trainable parameters. Every layer up to F6 is followed by
the squashing function f(a) = 1.7159 tanh(2a/3), weights start uniform in
+-2.4 / fan-in (the paper's appendix), biases at zero. The paper scales inputs
to mean ~0 and variance ~1 (background -0.1, ink 1.175 on MNIST); with its
small initial weights this matters (see the numbers below).

Deviation: the paper draws the RBF codes by hand as 7x12 bitmaps of the
characters. Here the codes are rows of the Walsh-Hadamard matrix (entries
(-1)^popcount(class & unit)) cut to 84 units: +-1 as in the paper,
deterministic, at least 20 of 84 units apart for up to 128 classes. The logit
of a class is minus the squared distance of F6 to its code.

Loss: softmax cross-entropy on these logits ignores what all classes share,
-|F6|^2 - 84, so it sees only 2 F6 . code: a fixed linear head of large gain
that never pulls F6 onto the codes. The paper trains with its MAP criterion
(eq. 9), `rbf_map_loss` below, whose constant "rubbish class" e^-j keeps that
pull. On sklearn digits upsampled to 32x32 and standardised (300 Adam steps of
128, lr 1e-3, 3 seeds) eq. 9 reached 97.5-98.1% test accuracy, cross-entropy
92.8-95.6%.

`lenet5_modern` is the version of today's tutorials: ReLU, 2x2 max-pooling,
C3 fully connected, C5 and F6 as Dense layers after flattening (so 28x28 MNIST
and 32x32 both work; C1 pads by 2 so 28x28 inputs give S4 the paper's 5x5),
and a linear head. `c1_padding=0` gives 32x32 inputs the paper's 5x5 S4
instead: registered as `lenet5_cifar` (3 channels in, 10 classes: 62,006
parameters, the LeNet of kuangliu/pytorch-cifar `models/lenet.py`).

Logits: the RBF head's are always float32 (a squared distance over 84 units
needs more than bfloat16's 8 mantissa bits); the linear heads' are in the
compute `dtype`.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, conv_general_dilated, max_pool
from jaxcnn.registry import register_model

SQUASH_A = 1.7159
SQUASH_S = 2.0 / 3.0
RBF_UNITS = 84  # F6 width = the 7x12 bitmap of the paper's codes

# Table I: the S2 maps each C3 map sees. 0-5: 3 neighbours, 6-11: 4 neighbours,
# 12-14: 4 non-contiguous, 15: all six.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def squash(x):
  """The paper's sigmoid f(a) = A tanh(S a): f(+-1) = +-1, where its curvature peaks."""
  return SQUASH_A * jnp.tanh(SQUASH_S * x)


def lecun98_uniform(fan_in=None):
  """Uniform(-2.4/F, 2.4/F) with F the fan-in (default: all kernel axes but the last)."""
  def init(key, shape, dtype=jnp.float32):
    fan = fan_in if fan_in is not None else int(np.prod(shape[:-1]))
    limit = 2.4 / fan
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def rbf_codes(num_classes: int, units: int = RBF_UNITS) -> np.ndarray:
  """[num_classes, units] fixed +-1 codes: rows of the Walsh-Hadamard matrix cut to `units` columns."""
  limit = 1 << (units - 1).bit_length()  # rows stay distinct while class < 2**ceil(log2(units))
  if not 1 <= num_classes <= limit:
    raise UserError(f"lenet5 head='rbf' supports 1..{limit} classes, got {num_classes}; use head='linear'")
  parity = np.vectorize(lambda n: bin(n).count("1") & 1)
  classes, units_ = np.arange(num_classes)[:, None], np.arange(units)[None, :]
  return (1 - 2 * parity(classes & units_)).astype(np.float32)


def rbf_map_loss(logits, labels, j: float = 1.0):
  """The paper's MAP criterion (eq. 9) per example, for the RBF head's logits.

  E = y_c + log(e^-j + sum_i e^-y_i) with y_i = -logits_i the squared distance
  of F6 to code i and c the label; j > 0 is the paper's constant (1.0 is this
  code's choice, used for the numbers above). For j -> inf it is softmax
  cross-entropy; a finite j keeps lowering y_c once the example is right.
  """
  logits = jnp.asarray(logits, jnp.float32)
  correct = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  rubbish = jnp.full(logits.shape[:-1] + (1,), -j, logits.dtype)
  return jax.nn.logsumexp(jnp.concatenate([rubbish, logits], axis=-1), axis=-1) - correct


class SparseConv(nn.Module):
  """A VALID convolution whose output map j reads only the input maps `table[j]`.

  Only the connections in the table have weights, one kernel per fan-in: for
  LeNet-5's C3 `kernel_fanin3` [5,5,3,6], `kernel_fanin4` [5,5,4,9],
  `kernel_fanin6` [5,5,6,1] (column g of a kernel is the g-th output map with
  that fan-in, its input axis follows the table's order), plus `bias` [16]. The
  forward pass scatters them into one dense kernel whose other taps are
  constant zeros and runs one ordinary convolution: XLA:CPU computes grouped
  convolution gradients ~50x slower than a dense one this size, and the zeros
  keep the unlisted connections exactly absent (their gradients are zero).
  """
  table: Sequence[Sequence[int]]
  kernel_size: Sequence[int] = (5, 5)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_maps, out_maps = x.shape[-1], len(self.table)
    kernel = jnp.zeros((*self.kernel_size, in_maps, out_maps), self.dtype)
    for fan_in in sorted({len(inputs) for inputs in self.table}):
      maps = [j for j, inputs in enumerate(self.table) if len(inputs) == fan_in]
      taps = self.param(f"kernel_fanin{fan_in}", lecun98_uniform(),
                        (*self.kernel_size, fan_in, len(maps)), self.param_dtype)
      rows = np.array([[self.table[j][i] for j in maps] for i in range(fan_in)])  # [fan_in, maps]
      cols = np.broadcast_to(np.array(maps), rows.shape)
      kernel = kernel.at[:, :, rows, cols].set(taps.astype(self.dtype))
    bias = self.param("bias", nn.initializers.zeros, (out_maps,), self.param_dtype)
    y = conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class Subsample(nn.Module):
  """S2 / S4: each map's 2x2 sums times a trainable coefficient plus a trainable bias, squashed."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, maps = x.shape
    coeff = self.param("coeff", lecun98_uniform(fan_in=4), (maps,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (maps,), self.param_dtype)
    sums = x.reshape(batch, height // 2, 2, width // 2, 2, maps).sum(axis=(2, 4))
    return squash(sums * coeff.astype(self.dtype) + bias.astype(self.dtype))


class LeNet5(nn.Module):
  """The 1998 LeNet-5 on 32x32 inputs (any number of channels); see the module docstring."""
  num_classes: int = 10
  head: str = "rbf"  # 'rbf': fixed +-1 codes, logits = -squared distance; 'linear': Dense
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.head not in ("rbf", "linear"):
      raise UserError(f"lenet5 head must be 'rbf' or 'linear', got {self.head!r}")
    if x.ndim != 4 or x.shape[1:3] != (32, 32):
      raise UserError(f"lenet5 needs 32x32 NHWC inputs (its C5 is a 5x5 convolution over 5x5 maps), "
                      f"got shape {tuple(x.shape)}; pad or resize, or use lenet5_modern")
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    x = squash(Conv(6, (5, 5), padding="VALID", kernel_init=lecun98_uniform(), name="C1", **layer)(x))
    x = Subsample(name="S2", **layer)(x)
    x = squash(SparseConv(C3_TABLE, name="C3", **layer)(x))
    x = Subsample(name="S4", **layer)(x)
    x = squash(Conv(120, (5, 5), padding="VALID", kernel_init=lecun98_uniform(), name="C5", **layer)(x))
    x = x.reshape(x.shape[0], -1)
    x = squash(nn.Dense(RBF_UNITS, kernel_init=lecun98_uniform(), name="F6", **layer)(x))
    if self.head == "linear":
      return nn.Dense(self.num_classes, name="head", **layer)(x)
    codes = jnp.asarray(rbf_codes(self.num_classes))  # a constant, not a variable: never trained
    x = x.astype(jnp.float32)
    return -jnp.sum(jnp.square(x[:, None, :] - codes[None]), axis=-1)


class LeNet5Modern(nn.Module):
  """LeNet-5 as written today: ReLU, max-pool, dense C3, Dense C5/F6/head; 28x28 or 32x32."""
  num_classes: int = 10
  c1_padding: int = 2              # 2: 28x28 inputs reach S4 at 5x5; 0: 32x32 inputs do (the paper's geometry)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if not 0 <= int(self.c1_padding) <= 2:
      raise UserError(f"c1_padding={self.c1_padding} must be 0, 1 or 2 (2: 28x28 inputs, 0: 32x32 as the paper)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    smallest = 16 - 2 * self.c1_padding  # C1 5x5, pool, C3 5x5, pool must leave at least 1x1
    if x.ndim != 4 or min(x.shape[1:3]) < smallest:
      raise UserError(f"lenet5_modern with c1_padding={self.c1_padding} needs NHWC inputs of at least "
                      f"{smallest}x{smallest}, got shape {tuple(x.shape)}")
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    pad = int(self.c1_padding)
    x = nn.relu(Conv(6, (5, 5), padding=((pad, pad), (pad, pad)), name="C1", **layer)(x))
    x = max_pool(x, 2, 2)
    x = nn.relu(Conv(16, (5, 5), padding="VALID", name="C3", **layer)(x))
    x = max_pool(x, 2, 2)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, name="C5", **layer)(x))
    x = nn.relu(nn.Dense(84, name="F6", **layer)(x))
    return nn.Dense(self.num_classes, name="head", **layer)(x)


register_model("lenet5")(LeNet5)
register_model("lenet5_modern")(LeNet5Modern)
register_model("lenet5_cifar", c1_padding=0)(LeNet5Modern)
