"""Recurrent layers over [batch, time, features]: simple RNN, LSTM, GRU (torch.nn.RNN / LSTM / GRU semantics).

API (what the CRNN and the video heads use):

    layer = LSTM(hidden_size=256, num_layers=2, bidirectional=True)      # or GRU(...), SimpleRNN(...)
    y, carry = layer(x, seq_lengths=None, initial_carry=None, train=False)

* `x` [B, T, F] (batch first, always). `y` [B, T, D * H] with D = 2 for a bidirectional layer
  and `merge='concat'` (forward features first, as PyTorch), [B, T, H] with `merge='sum'` or one
  direction. The merge applies at every layer's output (what the next layer reads), as Keras'
  `Bidirectional(merge_mode=...)` stacked; PyTorch has only 'concat'.
* `seq_lengths` int [B] (optional, each >= 1): steps t >= length are padding. Their outputs are
  zeros (as `pad_packed_sequence` gives), the final carry is the state after each sequence's last
  valid step, and the backward direction starts at each sequence's own last step (flax's
  `flip_sequences`), so a padded batch gives exactly what `pack_padded_sequence` gives in PyTorch.
* `carry` is a tuple with one entry per layer and direction, in PyTorch's h_n order (layer 0
  forward, layer 0 backward, layer 1 forward, ...). Each entry is the flax cell's carry: an array
  h [B, H] for RNN and GRU, a pair (c, h) for the LSTM (note: PyTorch returns (h_n, c_n)).
  `initial_carry` takes the same structure (zeros when omitted).
* `dropout` acts on the outputs of every layer but the last (as PyTorch), only when `train=True`,
  with the 'dropout' PRNG stream.
* `unroll` is forwarded to `nn.scan`: 1 (default) keeps one loop body, so compile time does not
  grow with T; a larger value unrolls that many steps per iteration.

Two implementations with the same parameters (names, shapes, initialisers) and results (tested equal):
* `impl='flax'`: flax's cells `SimpleCell` (tanh or relu), `OptimizedLSTMCell` (same parameters as
  `LSTMCell`, its four gate matmuls fused), `GRUCell`, each run by `nn.RNN` (a scan);
* `impl='hoisted'` (default): flax's cell equations and parameters (flax's `DenseParams`), but the
  input-side products of all T steps are computed before the scan as one [B*T, F] x [F, G*H] matmul and
  the scan carries only h @ W_h, as PyTorch's and cuDNN's LSTMs do (`HoistedDirection`); padded steps
  keep the carry (a select per step) instead of nn.RNN's gather of the carry history.
Both compute exactly PyTorch's recurrences once PyTorch's two biases are folded into flax's one:

    RNN   h' = act(x W_ih^T + h W_hh^T + b_ih + b_hh)                    flax: i.bias = b_ih + b_hh
    LSTM  gates i, f, g, o (PyTorch's order) = x W_ih^T + h W_hh^T + b_ih + b_hh
          c' = f c + i g,  h' = o tanh(c')                               flax: h{i,f,g,o}.bias = b_ih + b_hh
    GRU   r, z = sigmoid(x W_i{r,z}^T + b_i{r,z} + h W_h{r,z}^T + b_h{r,z})
          n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))               b_hn stays inside r * (...):
          h' = (1 - z) n + z h                                           flax: i{r,z}.bias = b_i + b_h,
                                                                          in.bias = b_in, hn.bias = b_hn
`jaxcnn.convert.recurrent` maps torch state dicts onto these parameters. Parameter tree:
{'l0': {'cell': {...}}, 'l0_reverse': {'cell': {...}}, 'l1': ...} (PyTorch's `_l0`, `_l0_reverse`).
Initialisation is flax's (LeCun-normal input kernels, orthogonal recurrent kernels, zero biases),
not PyTorch's uniform(+-1/sqrt(H)).
"""
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams, flip_sequences

from jaxcnn.errors import UserError, unknown

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
MERGES = ("concat", "sum")
IMPLS = ("hoisted", "flax")
# flax's parameter names per cell: input-side projections (computed for every step at once by the hoisted
# implementation) and recurrent ones; with bias or not, as flax's cells create them.
INPUT_PARAMS = {"lstm": (("ii", False), ("if", False), ("ig", False), ("io", False)),
                "gru": (("ir", True), ("iz", True), ("in", True)), "rnn": (("i", True),)}
RECURRENT_PARAMS = {"lstm": (("hi", True), ("hf", True), ("hg", True), ("ho", True)),
                    "gru": (("hr", False), ("hz", False), ("hn", True)), "rnn": (("h", False),)}


def make_cell(cell: str, hidden_size: int, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.RNNCellBase:
  """The flax cell for one of CELLS, unbound (`parent=None`) so that the `nn.RNN` it is given to owns it."""
  kw = dict(features=hidden_size, dtype=dtype, param_dtype=param_dtype, parent=None)
  if cell == "lstm":
    return nn.OptimizedLSTMCell(**kw)
  if cell == "gru":
    return nn.GRUCell(**kw)
  if cell in ("rnn_tanh", "rnn_relu"):
    return nn.SimpleCell(activation_fn=nn.tanh if cell == "rnn_tanh" else nn.relu, **kw)
  raise unknown("recurrent cell", cell, CELLS)


def time_mask(seq_lengths, steps: int):
  """[B, T] bool: True on the valid steps t < seq_lengths[b]."""
  return jnp.arange(steps)[None, :] < jnp.asarray(seq_lengths)[:, None]


class _CellParams(nn.Module):
  """flax's parameters of one cell (same names, shapes and initialisers), concatenated per side:
  (input kernel [F, G*H], input bias [G*H], recurrent kernel [H, G*H], recurrent bias [G*H]); absent biases
  are zeros."""
  cell: str
  hidden_size: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: int):
    kind = "rnn" if self.cell.startswith("rnn") else self.cell
    h = self.hidden_size

    def side(names, fan_in, init):
      kernels, biases = [], []
      for name, use_bias in names:
        # flax's own DenseParams, as OptimizedLSTMCell creates them: {'kernel' [fan_in, H], 'bias' [H]}.
        kernel, bias = DenseParams(h, use_bias, self.param_dtype, kernel_init=init, name=name)(
            jax.ShapeDtypeStruct((fan_in,), self.param_dtype))
        kernels.append(kernel)
        biases.append(bias if use_bias else jnp.zeros((h,), self.param_dtype))
      return jnp.concatenate(kernels, axis=1), jnp.concatenate(biases)

    wi, bi = side(INPUT_PARAMS[kind], features, nn.linear.default_kernel_init)
    wh, bh = side(RECURRENT_PARAMS[kind], h, nn.initializers.orthogonal())
    return wi, bi, wh, bh


def _step_fn(cell: str, wh, bh, dtype):
  """One recurrent step given the step's precomputed input projection `gx` (bias included)."""
  wh, bh = wh.astype(dtype), bh.astype(dtype)
  if cell == "lstm":
    def step(carry, gx):
      c, h = carry
      i, f, g, o = jnp.split(gx + h @ wh + bh, 4, axis=-1)
      c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
      h = nn.sigmoid(o) * jnp.tanh(c)
      return (c, h), h
  elif cell == "gru":
    def step(h, gx):
      xr, xz, xn = jnp.split(gx, 3, axis=-1)
      hr, hz, hn = jnp.split(h @ wh + bh, 3, axis=-1)   # bh = (0, 0, b_hn): b_hn stays inside r * (...)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + r * hn)
      h = (1.0 - z) * n + z * h
      return h, h
  else:
    act = jnp.tanh if cell == "rnn_tanh" else nn.relu
    def step(h, gx):
      h = act(gx + h @ wh)
      return h, h
  return step


class HoistedDirection(nn.Module):
  """One direction of one layer: flax's cell equations and parameters, the input projections of all steps
  computed before the scan (one [B*T, F] x [F, G*H] product) so that the scan carries only h @ W_h."""
  cell: str
  hidden_size: int
  reverse: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, seq_lengths=None, initial_carry=None):
    batch, steps = x.shape[:2]
    wi, bi, wh, bh = _CellParams(self.cell, self.hidden_size, self.param_dtype, name="cell")(x.shape[-1])
    if self.reverse:   # each sequence's valid steps reversed, padding kept at the end (as nn.RNN)
      x = flip_sequences(x, seq_lengths, num_batch_dims=1, time_major=False)
    gx = jnp.einsum("btf,fg->tbg", x.astype(self.dtype), wi.astype(self.dtype)) + bi.astype(self.dtype)
    valid = (jnp.ones((steps, batch, 1), bool) if seq_lengths is None
             else time_mask(seq_lengths, steps).T[..., None])
    if initial_carry is None:
      zeros = jnp.zeros((batch, self.hidden_size), self.param_dtype)
      initial_carry = (zeros, zeros) if self.cell == "lstm" else zeros
    step = _step_fn(self.cell, wh, bh, self.dtype)

    def body(carry, inputs):
      g, keep = inputs
      new, y = step(carry, g)
      # Padded steps leave the carry as it was, so the final carry is each sequence's last valid one.
      return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry), y

    carry, ys = jax.lax.scan(body, initial_carry, (gx, valid), unroll=self.unroll)
    ys = jnp.swapaxes(ys, 0, 1)
    if self.reverse:
      ys = flip_sequences(ys, seq_lengths, num_batch_dims=1, time_major=False)
    return carry, ys


class Recurrent(nn.Module):
  """A stack of recurrent layers, torch.nn.RNN/LSTM/GRU style (see the module docstring)."""
  hidden_size: int
  cell: str = "lstm"            # rnn_tanh | rnn_relu | lstm | gru
  num_layers: int = 1
  bidirectional: bool = False
  merge: str = "concat"         # how the two directions' outputs combine: concat | sum
  dropout: float = 0.0          # on every layer's output but the last, in training
  unroll: int = 1
  impl: str = "hoisted"         # hoisted | flax (see the module docstring)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def num_directions(self) -> int:
    return 2 if self.bidirectional else 1

  def _check(self, x, initial_carry):
    if self.cell not in CELLS:
      raise unknown("recurrent cell", self.cell, CELLS)
    if self.merge not in MERGES:
      raise unknown("bidirectional merge", self.merge, MERGES)
    if self.impl not in IMPLS:
      raise unknown("recurrent implementation (impl)", self.impl, IMPLS)
    if self.num_layers < 1 or self.hidden_size < 1 or not 0.0 <= self.dropout < 1.0:
      raise UserError(f"recurrent layer: need num_layers >= 1, hidden_size >= 1 and 0 <= dropout < 1, got "
                      f"{self.num_layers}, {self.hidden_size}, {self.dropout}")
    if x.ndim != 3:
      raise UserError(f"recurrent layer input must be [batch, time, features], got shape {tuple(x.shape)}")
    expected = self.num_layers * self.num_directions
    if initial_carry is not None and len(initial_carry) != expected:
      raise UserError(f"initial_carry needs {expected} entries (layers x directions), got {len(initial_carry)}")

  @nn.compact
  def __call__(self, x, seq_lengths=None, initial_carry: Optional[Sequence[Any]] = None, train: bool = False):
    self._check(x, initial_carry)
    mask = None if seq_lengths is None else time_mask(seq_lengths, x.shape[1])[..., None]
    carries = []
    for layer in range(self.num_layers):
      outputs = []
      for direction in range(self.num_directions):
        index = layer * self.num_directions + direction
        name = f"l{layer}" + ("_reverse" if direction else "")
        start = None if initial_carry is None else initial_carry[index]
        if self.impl == "flax":
          rnn = nn.RNN(make_cell(self.cell, self.hidden_size, self.dtype, self.param_dtype),
                       unroll=self.unroll, return_carry=True, reverse=direction == 1, keep_order=True, name=name)
          carry, y = rnn(x, seq_lengths=seq_lengths, initial_carry=start)
        else:
          carry, y = HoistedDirection(self.cell, self.hidden_size, direction == 1, self.unroll, self.dtype,
                                      self.param_dtype, name=name)(x, seq_lengths, start)
        if mask is not None:  # nn.RNN leaves whatever the cell computed on padded steps
          y = jnp.where(mask, y, 0)
        carries.append(carry)
        outputs.append(y)
      if len(outputs) == 1:
        x = outputs[0]
      elif self.merge == "concat":
        x = jnp.concatenate(outputs, axis=-1)
      else:
        x = outputs[0] + outputs[1]
      if self.dropout > 0 and layer < self.num_layers - 1:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x, tuple(carries)


class LSTM(Recurrent):
  """torch.nn.LSTM(batch_first=True) counterpart; carry entries are (c, h)."""
  cell: str = "lstm"


class GRU(Recurrent):
  """torch.nn.GRU(batch_first=True) counterpart."""
  cell: str = "gru"


class SimpleRNN(Recurrent):
  """torch.nn.RNN(batch_first=True) counterpart; `cell` 'rnn_tanh' (default) or 'rnn_relu'."""
  cell: str = "rnn_tanh"
