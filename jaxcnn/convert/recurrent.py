"""torch.nn.RNN / LSTM / GRU state dicts -> `jaxcnn.layers.recurrent.Recurrent` parameters.

PyTorch stacks each layer's gates in one matrix, weight_ih_l{k}[_reverse] [G*H, F] and
weight_hh_l{k}[_reverse] [G*H, H] with G row blocks in the order
  LSTM: i, f, g, o      GRU: r, z, n      RNN: one block,
and keeps two biases, bias_ih and bias_hh. flax's cells hold one [in, H] kernel per gate and one
bias per gate; the mapping (see the layer's docstring for why it is exact):
  LSTM  l{k}/cell/i{x}/kernel = W_ix^T     l{k}/cell/h{x}/kernel = W_hx^T   h{x}/bias = b_ix + b_hx
  GRU   i{r,z}: kernel W^T, bias b_i + b_h;  h{r,z}: kernel only;  in: W_in^T, b_in;  hn: W_hn^T, b_hn
  RNN   i: W_ih^T, b_ih + b_hh;  h: W_hh^T
A layer built with `bias=False` in PyTorch converts with zero biases.
"""
from typing import Dict

import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers.recurrent import CELLS

GATES = {"lstm": "ifgo", "gru": "rzn"}


def _np(x):
  return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _cell_params(cell: str, w_ih, w_hh, b_ih, b_hh) -> Dict[str, Dict[str, np.ndarray]]:
  hidden = w_hh.shape[1]
  if cell in ("rnn_tanh", "rnn_relu"):
    return {"i": {"kernel": w_ih.T, "bias": b_ih + b_hh}, "h": {"kernel": w_hh.T}}
  gates = GATES[cell]
  block = lambda a, k: a[k * hidden:(k + 1) * hidden]
  out = {}
  for k, g in enumerate(gates):
    wi, wh, bi, bh = block(w_ih, k), block(w_hh, k), block(b_ih, k), block(b_hh, k)
    if cell == "lstm":
      out[f"i{g}"] = {"kernel": wi.T}
      out[f"h{g}"] = {"kernel": wh.T, "bias": bi + bh}
    elif g == "n":  # GRU's candidate: b_hn is multiplied by r, so it cannot be folded into b_in
      out["in"] = {"kernel": wi.T, "bias": bi}
      out["hn"] = {"kernel": wh.T, "bias": bh}
    else:
      out[f"i{g}"] = {"kernel": wi.T, "bias": bi + bh}
      out[f"h{g}"] = {"kernel": wh.T}
  return out


def torch_recurrent_to_flax(state_dict, cell: str, num_layers: int = 1, bidirectional: bool = False,
                            prefix: str = "") -> dict:
  """{'l0': {'cell': ...}, 'l0_reverse': ...} (numpy, float32) from a torch RNN/LSTM/GRU state dict.

  `state_dict` maps names to tensors or arrays (`module.state_dict()`); `prefix` selects a
  submodule's entries ('rnn.' for 'rnn.weight_ih_l0'). `cell` is one of rnn_tanh, rnn_relu,
  lstm, gru (torch.nn.RNN's nonlinearity='relu' -> 'rnn_relu'). Projections (LSTM proj_size)
  are not supported.
  """
  if cell not in CELLS:
    raise unknown("recurrent cell", cell, CELLS)
  params = {}
  for layer in range(num_layers):
    for suffix in ("", "_reverse") if bidirectional else ("",):
      name = lambda kind: f"{prefix}{kind}_l{layer}{suffix}"
      if name("weight_ih") not in state_dict:
        raise UserError(f"torch recurrent state dict: missing '{name('weight_ih')}' "
                        f"(have {sorted(state_dict)[:8]})")
      if name("weight_hr") in state_dict:
        raise UserError("torch LSTM with proj_size > 0 is not supported")
      w_ih = _np(state_dict[name("weight_ih")]).astype(np.float32)
      w_hh = _np(state_dict[name("weight_hh")]).astype(np.float32)
      zeros = np.zeros(w_ih.shape[0], np.float32)
      b_ih = _np(state_dict[name("bias_ih")]).astype(np.float32) if name("bias_ih") in state_dict else zeros
      b_hh = _np(state_dict[name("bias_hh")]).astype(np.float32) if name("bias_hh") in state_dict else zeros
      params[f"l{layer}{suffix}"] = {"cell": _cell_params(cell, w_ih, w_hh, b_ih, b_hh)}
  return params


def torch_module_to_flax(module) -> dict:
  """Parameters for an equivalent `Recurrent` from a torch.nn.RNN / LSTM / GRU module."""
  kind = type(module).__name__
  cell = {"LSTM": "lstm", "GRU": "gru"}.get(kind) or ("rnn_relu" if getattr(module, "nonlinearity", "") == "relu"
                                                      else "rnn_tanh")
  return torch_recurrent_to_flax(module.state_dict(), cell, module.num_layers, module.bidirectional)
