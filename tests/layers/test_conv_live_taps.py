"""cpu_conv.live_taps: kernel taps that read only padding are dropped (atrous rates >= the map size), exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.layers import conv_general_dilated, cpu_conv

DN = ("NHWC", "HWIO", "NHWC")


def test_rate_at_least_the_map_size_is_the_centre_tap():
  w = jnp.arange(3 * 3 * 2 * 4, dtype=jnp.float32).reshape(3, 3, 2, 4)
  # DeepLabV3's rate-36 ASPP branch on a 32x32 map (256x256 input, output stride 8): a 1x1 convolution.
  new_w, pads, dilation = cpu_conv.live_taps((4, 32, 32, 2), w, (1, 1), ((36, 36), (36, 36)), (36, 36))
  np.testing.assert_array_equal(new_w, w[1:2, 1:2])
  assert pads == ((0, 0), (0, 0)) and dilation == (1, 1)
  # Rate 24 on 32x32: the outer taps still meet 8 rows; nothing to drop.
  same = cpu_conv.live_taps((4, 32, 32, 2), w, (1, 1), ((24, 24), (24, 24)), (24, 24))
  assert same[0] is w and same[1] == ((24, 24), (24, 24)) and same[2] == (24, 24)
  # One dimension only: a tall, narrow map.
  new_w, pads, dilation = cpu_conv.live_taps((1, 40, 5, 2), w, (1, 1), ((12, 12), (12, 12)), (12, 12))
  np.testing.assert_array_equal(new_w, w[:, 1:2])
  assert pads == ((12, 12), (0, 0)) and dilation == (12, 1)
  # A one-sided pad: only the first tap is dead (tap 1 reads rows -4..1), the pads shrink by one rate.
  new_w, pads, dilation = cpu_conv.live_taps((1, 6, 6, 2), w, (1, 1), ((8, 0), (8, 0)), (4, 4))
  np.testing.assert_array_equal(new_w, w[1:, 1:])
  assert pads == ((4, 0), (4, 0)) and dilation == (4, 4)


CASES = [
    # x shape, w shape, strides, pads, dilation, groups
    ((2, 8, 8, 5), (3, 3, 5, 6), (1, 1), ((12, 12), (12, 12)), (12, 12), 1),   # all outer taps dead
    ((2, 8, 7, 5), (3, 3, 5, 6), (1, 1), ((9, 9), (4, 4)), (9, 4), 1),          # dead rows only
    ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), ((10, 10), (10, 10)), (10, 10), 1),    # strided
    ((2, 8, 8, 6), (3, 3, 1, 6), (1, 1), ((8, 8), (8, 8)), (8, 8), 6),          # depthwise
    ((1, 6, 6, 3), (5, 3, 3, 4), (1, 1), ((8, 8), (3, 3)), (4, 3), 1),          # 5 taps, both ends dead
]


@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilation,groups", CASES)
def test_values_and_gradients_match_lax(x_shape, w_shape, strides, pads, dilation, groups):
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32)
  w = jax.random.normal(kw, w_shape, jnp.float32)

  def ours(x, w):
    return conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=DN,
                                feature_group_count=groups)

  def reference(x, w):
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=DN,
                                    feature_group_count=groups, precision=lax.Precision.HIGHEST)

  assert cpu_conv.live_taps(x_shape, w, strides, pads, dilation)[0].size < w.size  # the case trims
  y, vjp = jax.vjp(jax.jit(ours), x, w)
  y_ref, vjp_ref = jax.vjp(reference, x, w)
  np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)
  dy = jax.random.normal(ky, y.shape, jnp.float32)
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_trimmed_atrous_conv_compiles_to_a_matmul():
  x = jnp.zeros((2, 8, 8, 16), jnp.float32)
  w = jnp.zeros((3, 3, 16, 8), jnp.float32)

  def loss(x, w):
    return conv_general_dilated(x, w, (1, 1), ((12, 12), (12, 12)), rhs_dilation=(12, 12),
                                dimension_numbers=DN).sum()

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).as_text()
  assert "onednn_conv" not in hlo and "convolution" not in hlo and "dot_general" in hlo
