"""cpu_conv's sparse-tap atrous convolution (DeepLabV3's rate-24 ASPP branch at 32x32): exact, chosen only there."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.layers import conv_general_dilated, cpu_conv, onednn

DN = ("NHWC", "HWIO", "NHWC")


def _reference(x, w, pads, dilation):
  return lax.conv_general_dilated(x, w, (1, 1), pads, rhs_dilation=dilation, dimension_numbers=DN,
                                  precision=lax.Precision.HIGHEST)


def test_choice_follows_the_live_share():
  aspp = lambda rate: ((4, 32, 32, 2048), (3, 3, 2048, 256), (1, 1), ((rate, rate), (rate, rate)), (rate, rate), 1)
  assert cpu_conv.live_fraction((4, 32, 32, 1), (3, 3), (1, 1), ((24, 24), (24, 24)), (24, 24)) == 0.25
  assert cpu_conv.live_fraction((4, 32, 32, 1), (3, 3), (1, 1), ((12, 12), (12, 12)), (12, 12)) == 0.5625
  assert cpu_conv.use_tap_conv(*aspp(24))
  assert not cpu_conv.use_tap_conv(*aspp(12))        # oneDNN's direct kernels are faster at 0.56
  assert not cpu_conv.use_tap_conv(*aspp(4))         # ResNet stage 4's dilated 3x3
  assert not cpu_conv.use_tap_conv((4, 32, 32, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
  assert not cpu_conv.use_tap_conv((4, 32, 32, 8), (3, 3, 8, 8), (2, 2), ((24, 24), (24, 24)), (24, 24), 1)
  assert not cpu_conv.use_tap_conv((4, 32, 32, 8), (3, 3, 1, 8), (1, 1), ((24, 24), (24, 24)), (24, 24), 8)
  # Every tap reads only padding (tap 0 rows o - 30 < 0, tap 1 rows o + 20 > 7): left to the other paths.
  assert cpu_conv.live_fraction((1, 8, 8, 1), (2, 2), (1, 1), ((30, 30), (30, 30)), (50, 50)) == 0.0
  assert not cpu_conv.use_tap_conv((1, 8, 8, 1), (2, 2, 1, 1), (1, 1), ((30, 30), (30, 30)), (50, 50), 1)


CASES = [
    # x shape, w shape, (low, high) pads, dilation
    ((2, 32, 32, 6), (3, 3, 6, 5), ((24, 24), (24, 24)), (24, 24)),     # the ASPP branch, few channels
    ((2, 16, 12, 5), (3, 3, 5, 4), ((10, 10), (9, 9)), (10, 9)),        # non-square
    ((1, 14, 11, 3), (3, 2, 3, 4), ((11, 9), (8, 0)), (11, 8)),         # asymmetric pads, 2-wide kernel
]


@pytest.mark.parametrize("x_shape,w_shape,pads,dilation", CASES)
@pytest.mark.parametrize("conv_mode", ["onednn", "xla"])
def test_values_and_gradients_match_lax(x_shape, w_shape, pads, dilation, conv_mode, monkeypatch):
  monkeypatch.setenv(cpu_conv.ENV_VAR, conv_mode)
  assert cpu_conv.use_tap_conv(x_shape, w_shape, (1, 1), pads, dilation, 1)  # the case takes the tap path
  kx, kw, kdy = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape) / np.sqrt(np.prod(w_shape[:3]))

  def ours(x, w):
    return conv_general_dilated(x, w, (1, 1), pads, rhs_dilation=dilation, dimension_numbers=DN)

  y, vjp = jax.vjp(jax.jit(ours), x, w)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, pads, dilation), x, w)
  dy = jax.random.normal(kdy, y.shape)
  for got, want, name in zip((y, *vjp(dy)), (y_ref, *vjp_ref(dy)), ("output", "input grad", "kernel grad")):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.abs(want).max()), err_msg=name)


def test_onednn_keeps_forward_and_input_gradient_and_matmuls_the_kernel_gradient(monkeypatch):
  if not onednn.available():
    pytest.skip("oneDNN extension not available here")
  monkeypatch.setenv(cpu_conv.ENV_VAR, "onednn")
  x, w = jnp.zeros((2, 32, 32, 8)), jnp.zeros((3, 3, 8, 4))

  def loss(x, w):
    return conv_general_dilated(x, w, (1, 1), ((24, 24), (24, 24)), rhs_dilation=(24, 24),
                                dimension_numbers=DN).sum()

  hlo = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).as_text()
  assert "jaxcnn_onednn_conv_fwd" in hlo and "jaxcnn_onednn_conv_bwd_data" in hlo
  assert "jaxcnn_onednn_conv_bwd_weights" not in hlo and "dot_general" in hlo


def test_kernel_gradient_of_taps_that_meet_no_pixel_is_zero():
  # Rate 36 on a 32x32 map, kernel not trimmed: only the centre tap reads pixels.
  kx, kdy = jax.random.split(jax.random.key(1))
  x, dy = jax.random.normal(kx, (2, 32, 32, 3)), jax.random.normal(kdy, (2, 32, 32, 4))
  pads, dilation = ((36, 36), (36, 36)), (36, 36)
  got = cpu_conv.tap_weight_grad(x, dy, (3, 3), pads, dilation)
  _, vjp = jax.vjp(lambda w: _reference(x, w, pads, dilation), jnp.zeros((3, 3, 3, 4)))
  want = vjp(dy)[0]
  assert float(jnp.abs(got.at[1, 1].set(0)).max()) == 0.0
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.abs(want).max()))


def test_bfloat16_takes_the_tap_path_in_float32_accumulation():
  kx, kw = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (2, 16, 12, 5)).astype(jnp.bfloat16)
  w = (jax.random.normal(kw, (3, 3, 5, 4)) / 6).astype(jnp.bfloat16)
  pads, dilation = ((10, 10), (9, 9)), (10, 9)
  y, vjp = jax.vjp(jax.jit(lambda x, w: conv_general_dilated(x, w, (1, 1), pads, rhs_dilation=dilation,
                                                             dimension_numbers=DN)), x, w)
  dx, dw = vjp(jnp.ones_like(y))
  assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16,) * 3
  x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, pads, dilation), x32, w32)
  for got, want in zip((y, dx, dw), (y_ref, *vjp_ref(jnp.ones_like(y_ref)))):
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0, atol=2e-2 * float(jnp.abs(want).max()))
