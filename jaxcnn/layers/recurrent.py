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

Cells are flax's: `SimpleCell` (tanh or relu), `OptimizedLSTMCell` (same parameters as
`LSTMCell`, its four gate matmuls fused), `GRUCell`, each run by `nn.RNN` (a scan). They compute
exactly PyTorch's recurrences once PyTorch's two biases are folded into flax's one:

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
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError, unknown

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
MERGES = ("concat", "sum")


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


class Recurrent(nn.Module):
  """A stack of recurrent layers, torch.nn.RNN/LSTM/GRU style (see the module docstring)."""
  hidden_size: int
  cell: str = "lstm"            # rnn_tanh | rnn_relu | lstm | gru
  num_layers: int = 1
  bidirectional: bool = False
  merge: str = "concat"         # how the two directions' outputs combine: concat | sum
  dropout: float = 0.0          # on every layer's output but the last, in training
  unroll: int = 1
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
        rnn = nn.RNN(make_cell(self.cell, self.hidden_size, self.dtype, self.param_dtype),
                     unroll=self.unroll, return_carry=True, reverse=direction == 1, keep_order=True,
                     name=f"l{layer}" + ("_reverse" if direction else ""))
        carry, y = rnn(x, seq_lengths=seq_lengths,
                       initial_carry=None if initial_carry is None else initial_carry[index])
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
