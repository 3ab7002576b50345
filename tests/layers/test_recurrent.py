"""Recurrent layers against torch.nn.RNN / LSTM / GRU (random weights, padded vs packed batches)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers.recurrent import GRU, LSTM, Recurrent, SimpleRNN

torch = pytest.importorskip("torch")
from jaxcnn.convert.recurrent import torch_module_to_flax  # noqa: E402

B, T, F, H = 3, 7, 5, 6
LENGTHS = np.array([7, 4, 1])


def torch_layer(cell, num_layers, bidirectional, batch_first=True):
  torch.manual_seed(0)
  kw = dict(input_size=F, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional,
            batch_first=batch_first)
  if cell == "lstm":
    return torch.nn.LSTM(**kw)
  if cell == "gru":
    return torch.nn.GRU(**kw)
  return torch.nn.RNN(nonlinearity=cell[4:], **kw)


def torch_run(module, x, lengths, batch_first=True):
  """Outputs [B, T, D*H] (zeros on padding) and h_n (, c_n) for a batch-first numpy input."""
  xt = torch.tensor(x, requires_grad=True)
  inp = xt if batch_first else xt.transpose(0, 1)
  if lengths is not None:
    inp = torch.nn.utils.rnn.pack_padded_sequence(inp, torch.tensor(lengths), batch_first=batch_first,
                                                  enforce_sorted=False)
  out, state = module(inp)
  if lengths is not None:
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
  if not batch_first:
    out = out.transpose(0, 1)
  return xt, out, state


def flax_state(carry, cell):
  """The flax carry tuple as torch's h_n [L*D, B, H] (and c_n)."""
  if cell == "lstm":
    return np.stack([h for _, h in carry]), np.stack([c for c, _ in carry])
  return np.stack(carry)


CASES = [("lstm", 2, True, True, LENGTHS), ("gru", 2, True, False, LENGTHS), ("rnn_tanh", 2, True, True, LENGTHS),
         ("rnn_relu", 1, False, True, None), ("lstm", 1, False, False, None), ("gru", 1, True, True, None)]


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,lengths", CASES)
def test_matches_torch(cell, num_layers, bidirectional, batch_first, lengths):
  x = np.random.RandomState(1).randn(B, T, F).astype(np.float32)
  module = torch_layer(cell, num_layers, bidirectional, batch_first)
  xt, out_t, state_t = torch_run(module, x, lengths, batch_first)
  layer = Recurrent(hidden_size=H, cell=cell, num_layers=num_layers, bidirectional=bidirectional)
  params = torch_module_to_flax(module)
  # Same tree as the layer's own init.
  own = layer.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  assert jax.tree.structure(own) == jax.tree.structure(params)
  assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, params)

  def run(p, xs):
    return layer.apply({"params": p}, xs, seq_lengths=None if lengths is None else jnp.asarray(lengths))

  y, carry = run(params, jnp.asarray(x))
  np.testing.assert_allclose(y, out_t.detach().numpy(), atol=1e-5)
  if cell == "lstm":
    h, c = flax_state(carry, cell)
    np.testing.assert_allclose(h, state_t[0].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(c, state_t[1].detach().numpy(), atol=1e-5)
  else:
    np.testing.assert_allclose(flax_state(carry, cell), state_t.detach().numpy(), atol=1e-5)

  # Gradients of the same scalar with respect to the input agree too.
  weights = np.random.RandomState(2).randn(*y.shape).astype(np.float32)
  (out_t * torch.tensor(weights)).sum().backward()
  gx = jax.grad(lambda xs: jnp.sum(run(params, xs)[0] * weights))(jnp.asarray(x))
  np.testing.assert_allclose(gx, xt.grad.numpy(), atol=1e-5)


def test_padding_does_not_leak():
  """Whatever sits in the padded steps changes nothing: outputs there are zero, the rest identical."""
  layer = GRU(hidden_size=H, num_layers=2, bidirectional=True)
  x = np.random.RandomState(3).randn(B, T, F).astype(np.float32)
  noisy = x.copy()
  mask = np.arange(T)[None, :] < LENGTHS[:, None]
  noisy[~mask] = 100.0
  params = layer.init(jax.random.PRNGKey(0), jnp.asarray(x))
  y1, c1 = layer.apply(params, jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS))
  y2, c2 = layer.apply(params, jnp.asarray(noisy), seq_lengths=jnp.asarray(LENGTHS))
  np.testing.assert_allclose(y1, y2, atol=1e-6)
  assert np.all(np.asarray(y1)[~mask] == 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), c1, c2)


def test_sum_merge_dropout_and_initial_carry():
  x = jnp.ones((2, 4, 3))
  layer = LSTM(hidden_size=5, num_layers=2, bidirectional=True, merge="sum", dropout=0.5)
  v = layer.init(jax.random.PRNGKey(0), x)
  y, carry = layer.apply(v, x)
  assert y.shape == (2, 4, 5) and len(carry) == 4 and carry[0][0].shape == (2, 5)
  # Dropout only in training, and it changes the output.
  y_train, _ = layer.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(y, y_train)
  # A given initial carry is used.
  ones = tuple((jnp.ones((2, 5)), jnp.ones((2, 5))) for _ in range(4))
  y0, _ = layer.apply(v, x, initial_carry=ones)
  assert not np.allclose(y, y0)


def test_scan_keeps_program_size_fixed():
  """The lowered program does not grow with T (scan); with unroll it does."""
  def lines(steps, unroll=1):
    layer = SimpleRNN(hidden_size=4, num_layers=2, bidirectional=True, unroll=unroll)
    x = jnp.zeros((2, steps, 3))
    v = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
    text = jax.jit(lambda p, x: layer.apply(p, x)[0]).lower(v, x).as_text()
    return text.count("\n")  # StableHLO ops, one per line (an unrolled body adds calls)

  assert lines(10) == lines(100)
  assert lines(10, unroll=10) > lines(10)


def test_bad_options():
  x = jnp.zeros((2, 4, 3))
  with pytest.raises(UserError, match="unknown recurrent cell"):
    Recurrent(hidden_size=4, cell="lstmm").init(jax.random.PRNGKey(0), x)
  with pytest.raises(UserError, match=r"\[batch, time, features\]"):
    LSTM(hidden_size=4).init(jax.random.PRNGKey(0), jnp.zeros((4, 3)))


@pytest.mark.parametrize("cell", ["lstm", "gru", pytest.param("rnn_tanh", marks=pytest.mark.slow)])
def test_hoisted_equals_flax_cells(cell):
  """The default implementation (input projections before the scan) computes what nn.RNN + flax's cell does,
  with the same parameter tree."""
  x = jnp.asarray(np.random.RandomState(4).randn(B, T, F).astype(np.float32))
  flax_layer = Recurrent(hidden_size=H, cell=cell, num_layers=2, bidirectional=True, impl="flax")
  hoisted = Recurrent(hidden_size=H, cell=cell, num_layers=2, bidirectional=True)
  v = flax_layer.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(np.shape, v) == jax.tree.map(np.shape, hoisted.init(jax.random.PRNGKey(0), x))
  for lengths in (None, jnp.asarray(LENGTHS)):
    y1, c1 = flax_layer.apply(v, x, seq_lengths=lengths)
    y2, c2 = hoisted.apply(v, x, seq_lengths=lengths)
    np.testing.assert_allclose(y1, y2, atol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), c1, c2)
