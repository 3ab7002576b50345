"""jaxcnn's ConvTranspose against flax's (same parameters), and the CPU lowering against lax."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.layers import ConvTranspose, cpu_conv

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 1e-2}


def _max_rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)


def _check_module(options, x_shape, dtype=jnp.float32, seed=0):
  """Same params as nn.ConvTranspose; same output and gradients w.r.t. input and params."""
  kx, kp, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32).astype(dtype)
  ours, ref = ConvTranspose(**options, dtype=dtype), nn.ConvTranspose(**options, dtype=dtype)
  params = ref.init(kp, x)
  chex.assert_trees_all_equal(ours.init(kp, x), params)
  if "bias" in params["params"]:  # a non-zero bias, so its gradient and addition are checked too
    params = {"params": {**params["params"], "bias": jnp.linspace(-1, 1, options["features"])}}

  def run(module):
    y, vjp = jax.vjp(lambda p, x: module.apply(p, x), params, x)
    cot = jax.random.normal(kc, y.shape, jnp.float32).astype(y.dtype)
    return y, *vjp(cot)

  got, want = jax.jit(lambda: run(ours))(), jax.jit(lambda: run(ref))()
  assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
  for name, g, w in zip(("output", "param grads", "input grad"), got, want):
    for gl, wl in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
      assert _max_rel_err(gl, wl) <= TOL[dtype], (name, _max_rel_err(gl, wl))


@pytest.mark.parametrize("kernel,strides,padding", [
    (4, 2, "SAME"),           # DCGAN / StackGAN upsampling
    (4, 2, "VALID"),
    (3, 2, "SAME"),
    (3, 2, "VALID"),
    (2, 2, "VALID"),          # FCN-style 2x2/2, phases without overlap
    (5, 3, "SAME"),
    (1, 2, "SAME"),           # fewer taps than phases: some phases are all zeros
    (3, 1, "SAME"),           # stride 1: an ordinary convolution
    (4, 2, ((1, 1), (2, 1))),  # explicit (dilated-input) padding, as lax.conv_transpose takes it
    (4, 2, 1),
    ((4, 3), (2, 1), "SAME"),  # different kernel and stride per axis
])
def test_matches_flax(kernel, strides, padding):
  ks = (kernel, kernel) if isinstance(kernel, int) else kernel
  _check_module(dict(features=6, kernel_size=ks, strides=strides, padding=padding), (2, 5, 6, 4))


@pytest.mark.parametrize("extra", [
    dict(transpose_kernel=True),
    dict(kernel_dilation=(2, 2)),
    dict(use_bias=False),
    dict(mask=np.tril(np.ones((4, 4, 4, 6), np.float32))),
])
def test_matches_flax_options(extra):
  _check_module(dict(features=6, kernel_size=(4, 4), strides=(2, 2), padding="SAME", **extra), (2, 5, 5, 4))


def test_matches_flax_bfloat16():
  _check_module(dict(features=8, kernel_size=(4, 4), strides=(2, 2), padding="SAME"), (2, 6, 6, 8),
                dtype=jnp.bfloat16)


def test_circular_padding_falls_back_to_flax():
  options = dict(features=3, kernel_size=(3, 3), strides=(2, 2), padding="CIRCULAR")
  _check_module(options, (1, 5, 5, 2))


@pytest.mark.parametrize("kernel,strides,pads,dilation", [
    ((4, 4), (2, 2), ((2, 2), (2, 2)), (1, 1)),
    ((3, 5), (3, 2), ((0, 1), (3, 0)), (1, 1)),
    ((3, 3), (2, 2), ((2, 1), (1, 2)), (2, 2)),
    ((2, 2), (3, 3), ((-1, 0), (1, 1)), (1, 1)),  # negative pads crop the output
])
def test_cpu_lowering_against_lax(kernel, strides, pads, dilation):
  """`conv_transpose_nhwc` against the input-dilated convolution it replaces, with gradients."""
  kx, kw, kc = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, (2, 7, 6, 3))
  w = jax.random.normal(kw, (*kernel, 3, 5))

  def run(fn):
    y, vjp = jax.vjp(lambda x, w: fn(x, w, strides, pads, dilation), x, w)
    return y, *vjp(jax.random.normal(kc, y.shape))

  got = jax.jit(lambda: run(cpu_conv.conv_transpose_nhwc))()
  want = jax.jit(lambda: run(cpu_conv.conv_transpose_reference))()
  for g, r in zip(got, want):
    assert g.shape == r.shape
    assert _max_rel_err(g, r) <= 2e-5


def test_strided_transpose_kernel_gradient_is_per_phase():
  """The kernel gradient is one weight-gradient convolution per output phase (2x2 = 4 for stride 2)."""
  x = jnp.ones((2, 4, 4, 8))
  w = jnp.ones((4, 4, 8, 8))
  pads = cpu_conv.transpose_pads((4, 4), (2, 2), "SAME", (1, 1))
  grad = jax.grad(lambda w: cpu_conv.conv_transpose_nhwc(x, w, (2, 2), pads).sum())
  convs = [e for e in jax.make_jaxpr(grad)(w).eqns if e.primitive.name == "conv_general_dilated"]
  phase_grads = [e for e in convs if tuple(e.params["lhs_dilation"]) == (2, 1)]  # see cpu_conv.weight_grad
  assert len(phase_grads) == 4, [e.params["lhs_dilation"] for e in convs]
  # Each phase of a 4x4 / 2 kernel has 2x2 taps: no zero taps are computed.
  assert all(e.outvars[0].aval.shape[1:3] == (2, 2) for e in phase_grads)
