"""ZFNet's deconvnet on a tiny network, against values derived by hand.

Network (1 input channel, 4x4): 1x1 conv to 3 channels with weights w1 = (1, -1, 1) -> ReLU ->
1x1 conv to 1 channel with w2 = (1, 2, -0.5) -> ReLU -> 2x2/2 max-pool (target layer 'block').
Per pixel z = 0.5 relu(x) + 2 relu(-x), so for

    x = [[ 1, -3,  .5,  2],        z = [[.5,  6, .25, 1 ],     pool = [[6, 2],    switches (argmax):
         [ 2, .5, -1,   0],             [ 1, .25, 2,  0 ],             [4, 2]]    (0,1) (1,2)
         [-2,  1,  4, -.5],             [ 4, .5,  2,  1 ],                        (2,0) (2,2)
         [ 0,  0,  1,  3]]              [ 0,  0, .5, 1.5]]

A signal s at a switch goes back through conv2 as (s, 2s, -s/2) on the three channels, then through
the ReLUs, then through conv1 as (a - b + c):
  deconvnet (ReLU on the signal): (s, 2s, 0) -> -s at every switch, whatever the sign of x there;
  gradient (forward mask):  x < 0 -> only b is on -> -2s;  x > 0 -> a and c on -> s - s/2 = s/2;
  guided (both): x < 0 -> -2s;  x > 0 -> relu(s) on a, relu(-s/2) = 0 on c -> s.
The projection of the strongest activation (6 at (0,1)) is -6 there and 0 elsewhere.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.explain import deconvnet, gradients, probe
from jaxcnn.layers import Conv, max_pool

X = np.array([[1, -3, .5, 2], [2, .5, -1, 0], [-2, 1, 4, -.5], [0, 0, 1, 3]], np.float32)
SWITCHES = np.zeros((4, 4), np.float32)
SWITCHES[[0, 1, 2, 2], [1, 2, 0, 2]] = 1


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(Conv(3, (1, 1), use_bias=False, name="conv1")(x))
    x = nn.relu(Conv(1, (1, 1), use_bias=False, name="conv2")(x))
    return max_pool(x, 2, 2)


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return jnp.mean(Block(name="block")(x), axis=(1, 2))


MODEL = Tiny()
VARIABLES = {"params": {"block": {"conv1": {"kernel": np.array([1, -1, 1], np.float32).reshape(1, 1, 1, 3)},
                                  "conv2": {"kernel": np.array([1, 2, -.5], np.float32).reshape(1, 1, 3, 1)}}}}
x = jnp.asarray(X[None, :, :, None])


def _backward(rule):
  """The input-space signal of a ones cotangent on the pool output under `rule`."""
  f = gradients.with_relu_backward(lambda x: probe.layer_activation(MODEL, VARIABLES, x, "block"), rule)
  pooled, pullback = jax.vjp(f, x)
  np.testing.assert_array_equal(np.asarray(pooled)[0, :, :, 0], [[6, 2], [4, 2]])
  return np.asarray(pullback(jnp.ones_like(pooled))[0])[0, :, :, 0]


def test_relu_rules_and_switches():
  sign = np.sign(X) * SWITCHES
  np.testing.assert_allclose(_backward("deconvnet"), -SWITCHES)
  np.testing.assert_allclose(_backward("gradient"), np.where(sign < 0, -2.0, 0.5) * SWITCHES)
  np.testing.assert_allclose(_backward("guided"), np.where(sign < 0, -2.0, 1.0) * SWITCHES)
  # the "gradient" rule is autodiff's own
  g = jax.grad(lambda x: jnp.sum(probe.layer_activation(MODEL, VARIABLES, x, "block")))(x)
  np.testing.assert_allclose(np.asarray(g)[0, :, :, 0], _backward("gradient"))


def test_projection_of_the_strongest_activation():
  expected = np.zeros((4, 4), np.float32)
  expected[0, 1] = -6
  recon = deconvnet.project(MODEL, VARIABLES, x, layer="block")
  np.testing.assert_allclose(np.asarray(recon)[0, :, :, 0], expected)


def test_strongest_only_keeps_one_value_per_image():
  a = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, 5)).astype(np.float32))
  kept = np.asarray(deconvnet.strongest_only(a, jnp.asarray(-1)))
  assert (np.count_nonzero(kept.reshape(3, -1), axis=1) == 1).all()
  np.testing.assert_allclose(kept.reshape(3, -1).sum(1), np.asarray(a).reshape(3, -1).max(1))
  in_channel = np.asarray(deconvnet.strongest_only(a, jnp.asarray(2)))
  np.testing.assert_allclose(in_channel[..., 2].reshape(3, -1).sum(1), np.asarray(a)[..., 2].reshape(3, -1).max(1))
  assert not np.delete(in_channel, 2, axis=-1).any()


def test_top_activations_pick_the_images_that_fire_most():
  images = np.stack([X * s for s in (1.0, 3.0, 0.5, 2.0)])[..., None]
  out = deconvnet.top_activations(MODEL, VARIABLES, images, "block", [0], k=2)
  top, proj = out[0]
  np.testing.assert_array_equal(top, [1, 3])  # pool maxima 18 and 12
  assert proj[0, 0, 1, 0] == -18.0 and np.count_nonzero(proj[0]) == 1
  p, img = deconvnet.support_crops(proj, proj, images[top])
  assert p.shape == img.shape == (2, 1, 1, 1) and img[0, 0, 0, 0] == -9.0
