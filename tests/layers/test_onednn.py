"""The oneDNN convolution custom calls against `lax.conv_general_dilated`, and the fallback without them."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.layers import conv_general_dilated, cpu_conv, onednn

DN = ("NHWC", "HWIO", "NHWC")

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN extension not available here")


def _reference(x, w, strides, pads, dilation, groups):
  return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=DN,
                                  feature_group_count=groups, precision=lax.Precision.HIGHEST)


def _value_and_grads(fn, x, w, dy_key):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(jax.random.normal(dy_key, y.shape, y.dtype)))


CASES = [
    # x shape, w shape (HWIO), strides, (low, high) pads, dilation, groups
    ((2, 9, 9, 5), (3, 3, 5, 7), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 11, 10, 6), (3, 3, 6, 8), (2, 2), ((1, 0), (2, 1)), (1, 1), 1),    # strided, asymmetric pads
    ((2, 10, 10, 4), (3, 2, 4, 6), (3, 1), ((0, 2), (0, 0)), (1, 1), 1),    # odd strides and kernel
    ((1, 12, 12, 6), (3, 3, 2, 6), (1, 1), ((2, 2), (2, 2)), (2, 2), 3),    # grouped, dilated
    ((2, 9, 9, 8), (3, 3, 1, 8), (2, 2), ((1, 1), (1, 1)), (1, 1), 8),      # depthwise, strided
    ((2, 9, 9, 4), (3, 3, 1, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), 4),      # depthwise, multiplier 2
    ((2, 8, 8, 5), (1, 1, 5, 9), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),      # 1x1
    ((2, 9, 9, 5), (1, 1, 5, 9), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),      # strided 1x1
    ((2, 8, 8, 3), (4, 4, 3, 6), (4, 4), ((0, 0), (0, 0)), (1, 1), 1),      # patchify
    ((2, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),    # ResNet stem, odd size
]


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilation,groups", CASES)
def test_values_and_gradients_match_lax(x_shape, w_shape, strides, pads, dilation, groups):
  kx, kw, kdy = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape) / np.sqrt(np.prod(w_shape[:3]))
  ours = jax.jit(lambda x, w: _value_and_grads(
      lambda x, w: onednn.conv(x, w, strides, pads, dilation, groups), x, w, kdy))(x, w)
  ref = _value_and_grads(lambda x, w: _reference(x, w, strides, pads, dilation, groups), x, w, kdy)
  for got, want, name in zip(ours, ref, ("output", "input grad", "kernel grad")):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.abs(want).max()), err_msg=name)


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,padding,dilation,groups", [
    ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), "SAME", (1, 1), 1),
    ((2, 10, 10, 4), (3, 3, 2, 6), (2, 2), "VALID", (2, 2), 2),
    ((2, 9, 9, 4), (3, 3, 1, 4), (2, 2), "SAME", (1, 1), 4),               # depthwise
    ((2, 9, 9, 4), (3, 3, 4, 6), (1, 1), ((-1, 2), (0, 1)), (1, 1), 1),    # negative pad: XLA rewrite
])
def test_layers_match_lax_under_jit(x_shape, w_shape, strides, padding, dilation, groups, monkeypatch):
  """`conv_general_dilated` in the default mode: string padding resolved, values and gradients."""
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  kx, kw, kdy = jax.random.split(jax.random.PRNGKey(1), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  kwargs = dict(window_strides=strides, padding=padding, rhs_dilation=dilation, feature_group_count=groups,
                dimension_numbers=DN)
  ours = jax.jit(lambda x, w: _value_and_grads(lambda x, w: conv_general_dilated(x, w, **kwargs), x, w, kdy))(x, w)
  ref = _value_and_grads(lambda x, w: lax.conv_general_dilated(x, w, precision=lax.Precision.HIGHEST, **kwargs),
                         x, w, kdy)
  for got, want in zip(ours, ref):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.abs(want).max()))


def test_inconsistent_shapes_are_left_to_lax():
  x, w = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 6))
  assert onednn.supports(x, w, ((1, 1), (1, 1)), 1)
  assert not onednn.supports(x, w, ((1, 1), (1, 1)), 2)                  # 4 channels / 2 groups != 4
  assert not onednn.supports(x, w, ((-1, 1), (1, 1)), 1)                 # negative padding
  assert not onednn.supports(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), ((1, 1), (1, 1)), 1)
  with pytest.raises(ValueError, match="feature_group_count"):
    conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2)


@needs_onednn
@pytest.mark.parametrize("w_shape,groups,targets", [
    ((3, 3, 4, 4), 1, {"fwd", "bwd_data", "bwd_weights"}),
    ((3, 3, 1, 4), 4, {"fwd", "bwd_data", "bwd_weights"}),   # depthwise
    ((1, 1, 4, 4), 1, set()),                                # pointwise: a matmul
])
def test_layers_route_float32_to_onednn(w_shape, groups, targets, monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  x, w = jnp.ones((1, 6, 6, 4)), jnp.ones(w_shape)
  fn = lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=groups)
  text = jax.jit(jax.value_and_grad(lambda x, w: jnp.sin(fn(x, w)).sum(), argnums=(0, 1))).lower(x, w).as_text()
  used = {t for t in ("fwd", "bwd_data", "bwd_weights") if f"jaxcnn_onednn_conv_{t}" in text}
  assert used == targets, used


def test_bfloat16_stays_on_xla(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  x, w = jnp.ones((1, 6, 6, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 4), jnp.bfloat16)
  fn = lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
  assert "jaxcnn_onednn" not in jax.jit(fn).lower(x, w).as_text()


@pytest.mark.parametrize("value", ["xla", "0"])
def test_env_selects_xla_formulations(value, monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, value)
  x, w = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
  text = jax.jit(lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)).lower(x, w).as_text()
  assert "jaxcnn_onednn" not in text


def test_unknown_env_value_is_a_user_error(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "mkl")
  with pytest.raises(cpu_conv.UserError, match="JAXCNN_CPU_CONV"):
    cpu_conv.mode()


def test_missing_library_falls_back_and_logs_once(monkeypatch, caplog):
  """Without the oneDNN wheels `available()` is False, logged once, and layers keep the XLA path."""
  def missing(dist, suffix):
    raise onednn.Unavailable(f"the '{dist}' package is not installed")
  monkeypatch.setattr(onednn, "_dist_file", missing)
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  onednn.available.cache_clear()
  try:
    with caplog.at_level(logging.WARNING, logger=onednn.__name__):
      assert not onednn.available() and not onednn.available()
      x, w = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
      fn = lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
      assert "jaxcnn_onednn" not in jax.jit(fn).lower(x, w).as_text()
      np.testing.assert_allclose(fn(x, w), _reference(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), 1), rtol=1e-6)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "not installed" in caplog.records[0].getMessage()
  finally:
    onednn.available.cache_clear()


def test_missing_compiler_is_reported(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
  with pytest.raises(onednn.Unavailable, match="compiler"):
    onednn.build(tmp_path, tmp_path)
  assert not list(tmp_path.glob("*.so"))  # no half-written library left behind


# ----------------------------------------------------------------------------- attention

def _xla_attention(qkv, scale):
  """softmax(scale q k^T) v per head with einsums: [S, N, 3, H, d] -> [S, N, H, d]."""
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = jnp.einsum("sqhd,skhd->shqk", q, k, precision=lax.Precision.HIGHEST) * scale
  return jnp.einsum("shqk,skhd->sqhd", jax.nn.softmax(logits, axis=-1), v, precision=lax.Precision.HIGHEST)


@needs_onednn
@pytest.mark.parametrize("shape, scale", [((3, 7, 2, 5), 5 ** -0.5),    # odd token count and head width
                                          ((2, 17, 3, 8), 1.0),         # no scale: the post-op is skipped
                                          ((1, 1, 1, 4), 0.5)])         # a single token
def test_attention_matches_xla_forward_and_gradient(shape, scale):
  s, n, h, d = shape
  rng = np.random.default_rng(0)
  qkv = jnp.asarray(rng.normal(size=(s, n, 3, h, d)), jnp.float32)
  dout = jnp.asarray(rng.normal(size=(s, n, h, d)), jnp.float32)
  out, vjp = jax.vjp(lambda t: onednn.attention(t, scale), qkv)
  ref, ref_vjp = jax.vjp(lambda t: _xla_attention(t, scale), qkv)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # The gradient reaches all three of q, k and v; a swapped slot or a missing scale would show here.
  np.testing.assert_allclose(vjp(dout)[0], ref_vjp(dout)[0], rtol=1e-4, atol=1e-5)


@needs_onednn
def test_attention_under_jit_and_vmap():
  qkv = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5, 3, 2, 4)), jnp.float32)
  out = jax.jit(jax.vmap(lambda t: onednn.attention(t, 0.5)))(qkv)
  np.testing.assert_allclose(out, jax.vmap(lambda t: _xla_attention(t, 0.5))(qkv), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_self_attention_layer_uses_onednn_only_where_it_applies(monkeypatch):
  """No bias and no dropout: the fused custom calls; a logit bias keeps the XLA formulation."""
  from jaxcnn.layers.attention import MultiHeadSelfAttention
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  layer = MultiHeadSelfAttention(num_heads=2)
  x = jnp.ones((2, 5, 8))
  params = layer.init(jax.random.PRNGKey(0), x)
  hlo = lambda **kw: jax.jit(lambda p, x: layer.apply(p, x, **kw)).lower(params, x).as_text()
  assert "jaxcnn_onednn_attention_fwd" in hlo()
  assert "jaxcnn_onednn_attention" not in hlo(bias=jnp.zeros((2, 5, 5)))
  monkeypatch.setenv(cpu_conv.ENV_VAR, "xla")
  assert "jaxcnn_onednn_attention" not in hlo()
