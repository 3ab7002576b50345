"""jaxcnn's XLA CPU formulations against plain `lax.conv_general_dilated`: forward and both gradients.

Every test here runs with `JAXCNN_CPU_CONV=xla` (the pure-XLA rewrites of
`cpu_conv`); the oneDNN path, the default when available, is tested in
test_onednn.py.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.layers import Conv, conv_general_dilated, cpu_conv

DN = ("NHWC", "HWIO", "NHWC")
# Relative to the largest magnitude of each result: float32 only reorders sums;
# bfloat16 results are rounded once from float32 accumulations on both sides.
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _xla_formulations(monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, "xla")


def _inputs(x_shape, w_shape, dtype, seed=0):
  kx, kw, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32).astype(dtype)
  w = (jax.random.normal(kw, w_shape, jnp.float32) / np.sqrt(np.prod(w_shape[:3]))).astype(dtype)
  return x, w, kc


def _value_and_grads(conv, x, w, cot_key, **kwargs):
  """The output and the (input, kernel) gradients of <output, random cotangent>."""
  def out(x, w):
    return conv(x, w, dimension_numbers=DN, **kwargs)
  y, vjp = jax.vjp(out, x, w)
  cot = jax.random.normal(cot_key, y.shape, jnp.float32).astype(y.dtype)
  return (y, *vjp(cot))


def _assert_close(got, want, dtype):
  for g, r, name in zip(got, want, ("output", "input grad", "kernel grad")):
    assert g.shape == r.shape and g.dtype == r.dtype, (name, g.shape, r.shape, g.dtype, r.dtype)
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    scale = max(np.abs(r).max(), 1e-6)
    err = np.abs(g - r).max() / scale
    assert err <= TOL[dtype], f"{name}: max error {err:.2e} of scale {scale:.3g}"


CASES = [
    # x shape, w shape (HWIO), strides, padding, rhs_dilation, groups
    ((2, 9, 9, 8), (3, 3, 8, 16), (1, 1), "SAME", (1, 1), 1),
    ((2, 9, 9, 8), (3, 3, 8, 16), (2, 2), "SAME", (1, 1), 1),
    ((2, 10, 10, 8), (3, 3, 8, 16), (2, 2), "SAME", (1, 1), 1),
    ((2, 9, 9, 8), (3, 3, 8, 16), (1, 1), "VALID", (1, 1), 1),
    ((2, 11, 9, 8), (3, 3, 8, 16), (2, 2), "VALID", (1, 1), 1),
    ((2, 9, 10, 8), (3, 2, 8, 16), (2, 1), ((2, 0), (1, 3)), (1, 1), 1),   # explicit, asymmetric
    ((2, 9, 9, 8), (3, 3, 8, 16), (1, 1), ((-1, 2), (0, 0)), (1, 1), 1),    # negative pad crops
    ((2, 12, 12, 8), (3, 3, 8, 16), (1, 1), "SAME", (2, 2), 1),             # dilation
    ((2, 12, 12, 8), (3, 3, 8, 16), (2, 2), ((2, 2), (2, 2)), (2, 3), 1),   # dilation and stride
    ((2, 16, 16, 3), (7, 7, 3, 16), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),   # ResNet stem
    ((2, 9, 9, 8), (1, 1, 8, 16), (1, 1), "SAME", (1, 1), 1),               # 1x1 -> matmul
    ((2, 9, 9, 8), (1, 1, 8, 16), (2, 2), "VALID", (1, 1), 1),              # strided 1x1
    ((2, 9, 9, 8), (1, 1, 8, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),     # padded 1x1 -> general
    ((2, 8, 8, 3), (4, 4, 3, 16), (4, 4), "VALID", (1, 1), 1),              # ViT patchify -> matmul
    ((2, 10, 9, 3), (4, 2, 3, 16), (4, 2), "VALID", (1, 1), 1),             # patchify, ragged edge
    ((2, 9, 9, 8), (3, 3, 2, 16), (1, 1), "SAME", (1, 1), 4),               # grouped
    ((2, 9, 9, 8), (3, 3, 4, 8), (2, 2), "SAME", (1, 1), 2),                # grouped, strided
    ((2, 9, 9, 8), (3, 3, 1, 8), (1, 1), "SAME", (1, 1), 8),                # depthwise
    ((2, 10, 10, 8), (3, 3, 1, 8), (2, 2), ((1, 1), (1, 1)), (1, 1), 8),    # depthwise, MobileNet s2
    ((2, 9, 9, 8), (3, 3, 1, 16), (2, 2), "VALID", (1, 1), 8),              # depthwise, multiplier 2
    ((2, 12, 12, 8), (5, 5, 1, 8), (1, 1), "SAME", (2, 2), 8),              # depthwise, dilated 5x5
    ((2, 11, 10, 8), (3, 3, 1, 8), (3, 2), ((0, 2), (2, -1)), (1, 1), 8),   # depthwise, odd strides/pads
    ((2, 13, 13, 8), (5, 3, 1, 8), (2, 2), ((3, 1), (1, 1)), (2, 1), 8),    # depthwise, dilation + stride
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("x_shape,w_shape,strides,padding,dilation,groups", CASES)
def test_matches_lax(x_shape, w_shape, strides, padding, dilation, groups, dtype):
  x, w, key = _inputs(x_shape, w_shape, dtype)
  kwargs = dict(window_strides=strides, padding=padding, rhs_dilation=dilation, feature_group_count=groups)
  ours = jax.jit(lambda x, w: _value_and_grads(conv_general_dilated, x, w, key, **kwargs))(x, w)
  ref = jax.jit(lambda x, w: _value_and_grads(lax.conv_general_dilated, x, w, key, **kwargs))(x, w)
  _assert_close(ours, ref, dtype)


def _primitives(fn, *args):
  """Primitive names of fn's jaxpr, looking inside custom_vjp calls (their forward)."""
  names = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      if "call_jaxpr" in eqn.params:
        walk(eqn.params["call_jaxpr"].jaxpr)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return names


@pytest.mark.parametrize("w_shape,groups,expected,absent", [
    ((3, 3, 8, 16), 1, {"custom_vjp_call", "conv_general_dilated"}, set()),    # XLA forward, own kernel grad
    ((1, 1, 8, 16), 1, {"custom_vjp_call", "dot_general"}, {"conv_general_dilated"}),
    ((3, 3, 1, 8), 8, {"custom_vjp_call", "mul"}, {"conv_general_dilated"}),
    ((3, 3, 2, 16), 4, {"custom_vjp_call", "conv_general_dilated"}, set()),
])
def test_cpu_formulation_is_used(w_shape, groups, expected, absent):
  x, w, _ = _inputs((1, 6, 6, 8), w_shape, jnp.float32)
  prims = _primitives(lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                                        feature_group_count=groups), x, w)
  assert expected <= prims and not absent & prims, prims


def test_weight_gradient_is_an_input_dilated_convolution():
  """The kernel gradient is the one convolution with input dilation (Eigen runs it, not YNNPACK)."""
  x, w, _ = _inputs((2, 8, 8, 8), (3, 3, 8, 8), jnp.float32)
  grad = jax.grad(lambda w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN).sum())
  convs = [e.params for e in jax.make_jaxpr(grad)(w).eqns if e.primitive.name == "conv_general_dilated"]
  dilated = [p for p in convs if tuple(p["lhs_dilation"]) != (1, 1)]
  assert len(dilated) == 1 and tuple(dilated[0]["lhs_dilation"]) == (2, 1), convs


@pytest.mark.parametrize("reason", ["env", "backend", "layout", "lhs_dilation"])
def test_falls_back_to_lax(reason, monkeypatch):
  x, w, _ = _inputs((1, 6, 6, 8), (3, 3, 8, 8), jnp.float32)
  kwargs = dict(dimension_numbers=DN)
  if reason == "env":
    monkeypatch.setenv(cpu_conv.ENV_VAR, "0")
  elif reason == "backend":
    monkeypatch.setattr(cpu_conv.jax, "default_backend", lambda: "gpu")
  elif reason == "layout":
    x = x.transpose(0, 3, 1, 2)
    kwargs = dict(dimension_numbers=("NCHW", "HWIO", "NCHW"))
  else:
    kwargs["lhs_dilation"] = (2, 2)
  prims = _primitives(lambda x, w: conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), **kwargs), x, w)
  assert prims == {"conv_general_dilated"}, prims


def test_default_backend_is_cpu_here():
  assert cpu_conv.enabled()  # the tests above exercise the CPU formulations


def test_preferred_element_type_float32_from_bfloat16():
  x, w, key = _inputs((2, 9, 9, 8), (3, 3, 8, 16), jnp.bfloat16)
  kwargs = dict(window_strides=(1, 1), padding="SAME", preferred_element_type=jnp.float32)
  ours = jax.jit(lambda x, w: _value_and_grads(conv_general_dilated, x, w, key, **kwargs))(x, w)
  ref = jax.jit(lambda x, w: _value_and_grads(lax.conv_general_dilated, x, w, key, **kwargs))(x, w)
  assert ours[0].dtype == jnp.float32
  _assert_close(ours, ref, jnp.bfloat16)


@pytest.mark.parametrize("strides,groups,kernel,padding", [
    (1, 1, 3, "SAME"), (2, 1, 3, 1), (2, 1, 1, "SAME"), (1, 4, 3, "SAME"), (2, 8, 3, 1), (4, 1, 4, "VALID")])
def test_module_matches_flax_conv(strides, groups, kernel, padding):
  """Same parameter tree as flax's nn.Conv, same output and parameter gradients."""
  x, _, key = _inputs((2, 8, 8, 8), (1, 1, 1, 1), jnp.float32)
  options = dict(features=16, kernel_size=(kernel, kernel), strides=strides, padding=padding,
                 feature_group_count=groups)
  ours, ref = Conv(**options), nn.Conv(**options)
  params = ref.init(key, x)
  chex.assert_trees_all_equal_shapes(ours.init(key, x), params)
  chex.assert_trees_all_equal(ours.init(key, x), params)

  def loss(module):
    return lambda p: jnp.sum(jnp.sin(module.apply(p, x)))
  chex.assert_trees_all_close(jax.jit(jax.value_and_grad(loss(ours)))(params),
                              jax.jit(jax.value_and_grad(loss(ref)))(params), rtol=2e-5, atol=2e-5)


def test_weight_grad_direct_against_lax_vjp():
  """`weight_grad` alone, for a stride/dilation/padding mix where rows and columns differ."""
  x, w, key = _inputs((3, 13, 11, 6), (3, 2, 6, 5), jnp.float32)
  strides, pads, dilation = (2, 3), ((1, 2), (0, 1)), (2, 1)
  y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                                      dimension_numbers=DN), w)
  dy = jax.random.normal(key, y.shape)
  got = cpu_conv.weight_grad(x, dy, (3, 2), strides, pads, dilation)
  np.testing.assert_allclose(got, vjp(dy)[0], rtol=2e-5, atol=2e-5 * float(jnp.abs(got).max()))
