"""MultiHeadSelfAttention against a naive softmax(QK^T / sqrt(d)) V written out by hand."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers.attention import MultiHeadSelfAttention

BATCH, TOKENS, DIM, HEADS = 2, 7, 12, 3


def normal(seed, shape):
  """Test inputs from numpy: no random-number kernels to compile."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def key(seed):
  """rbg keys: their dropout masks compile ~3x faster than threefry's on CPU."""
  return jax.random.key(seed, impl="unsafe_rbg")


def naive_attention(params, x, num_heads, bias=None):
  """Reference: per-head softmax(q k^T / sqrt(d) + bias) v, then the output projection."""
  qkv = x @ params["qkv"]["kernel"] + params["qkv"]["bias"]
  q, k, v = np.split(np.asarray(qkv), 3, axis=-1)  # timm layout: [q | k | v] along features
  head_dim = q.shape[-1] // num_heads
  heads = []
  for h in range(num_heads):
    sl = slice(h * head_dim, (h + 1) * head_dim)
    logits = q[..., sl] @ np.swapaxes(k[..., sl], -1, -2) / np.sqrt(head_dim)
    if bias is not None:
      logits = logits + np.broadcast_to(bias, (x.shape[0], num_heads) + logits.shape[-2:])[:, h]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads.append(weights @ v[..., sl])
  out = np.concatenate(heads, axis=-1)
  return out @ params["proj"]["kernel"] + params["proj"]["bias"]


@pytest.fixture(scope="module")
def setup():
  layer = MultiHeadSelfAttention(num_heads=HEADS)
  x = normal(0, (BATCH, TOKENS, DIM))
  params = layer.init(key(1), x)["params"]
  # Non-zero biases so a wrong bias path would show.
  params = jax.tree.map(lambda p: p + 0.1 * normal(2, p.shape), params)
  return layer, x, params


def test_param_layout_is_timm_fused_qkv(setup):
  layer, x, params = setup
  chex.assert_shape(params["qkv"]["kernel"], (DIM, 3 * DIM))
  chex.assert_shape(params["qkv"]["bias"], (3 * DIM,))
  chex.assert_shape(params["proj"]["kernel"], (DIM, DIM))


@pytest.mark.parametrize("transform", [jax.jit, lambda f: f], ids=["jit", "nojit"])
def test_matches_naive_attention(setup, transform):
  layer, x, params = setup
  out = transform(lambda p, x: layer.apply({"params": p}, x))(params, x)
  chex.assert_shape(out, (BATCH, TOKENS, DIM))
  chex.assert_trees_all_close(out, naive_attention(jax.device_get(params), np.asarray(x), HEADS),
                              atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias_shape", [(HEADS, TOKENS, TOKENS), (TOKENS, TOKENS), (BATCH, HEADS, TOKENS, TOKENS)])
def test_additive_bias(setup, bias_shape):
  layer, x, params = setup
  bias = normal(3, bias_shape)
  out = layer.apply({"params": params}, x, bias)
  expected = naive_attention(jax.device_get(params), np.asarray(x), HEADS, np.asarray(bias))
  chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)
  # The bias must matter: without it the output differs.
  assert not np.allclose(out, layer.apply({"params": params}, x), atol=1e-3)


def test_attention_dropout_only_in_train(setup):
  _, x, params = setup
  layer = MultiHeadSelfAttention(num_heads=HEADS, dropout_rate=0.5)
  eval_out = layer.apply({"params": params}, x)  # no rng needed
  chex.assert_trees_all_close(eval_out, naive_attention(jax.device_get(params), np.asarray(x), HEADS),
                              atol=1e-5, rtol=1e-5)
  train = lambda rng: layer.apply({"params": params}, x, train=True, rngs={"dropout": rng})
  a, b = train(key(4)), train(key(5))
  assert not np.allclose(a, eval_out, atol=1e-3)
  assert not np.allclose(a, b, atol=1e-3)
  chex.assert_trees_all_close(a, train(key(4)))  # same key, same result


def test_explicit_dropout_path_equals_fused_path(setup):
  """The explicit-weights path (used for dropout) is the same attention as the fused one."""
  _, x, params = setup
  bias = normal(6, (HEADS, TOKENS, TOKENS))
  layer = MultiHeadSelfAttention(num_heads=HEADS, dropout_rate=1e-9)  # keeps every weight
  explicit = layer.apply({"params": params}, x, bias, train=True, rngs={"dropout": key(0)})
  fused = layer.apply({"params": params}, x, bias)
  chex.assert_trees_all_close(explicit, fused, atol=1e-5, rtol=1e-5)


def test_extra_batch_axes_and_bfloat16(setup):
  _, x, params = setup
  layer = MultiHeadSelfAttention(num_heads=HEADS, dtype=jnp.bfloat16)
  windows = jnp.stack([x, 2 * x])  # [2, B, N, D], e.g. windows of a MaxViT stage
  out = layer.apply({"params": params}, windows)
  assert out.dtype == jnp.bfloat16
  chex.assert_shape(out, (2, BATCH, TOKENS, DIM))
  chex.assert_trees_all_close(out[1].astype(jnp.float32),
                              naive_attention(jax.device_get(params), 2 * np.asarray(x), HEADS),
                              atol=0.1, rtol=0.05)


def test_qkv_and_out_features(setup):
  _, x, _ = setup
  layer = MultiHeadSelfAttention(num_heads=2, qkv_features=8, out_features=5, use_bias=False)
  variables = layer.init(key(0), x)
  assert "bias" not in variables["params"]["qkv"]
  chex.assert_shape(variables["params"]["qkv"]["kernel"], (DIM, 24))
  chex.assert_shape(layer.apply(variables, x), (BATCH, TOKENS, 5))
