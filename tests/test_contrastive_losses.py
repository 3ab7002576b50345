"""CLIP and SigLIP losses: open_clip's values, the global batch on 1 vs 8 devices (jit shardings and pmap, loss and
gradients), and chunked == unchunked."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from open_clip.loss import ClipLoss, SigLipLoss

from jaxcnn import losses

B, D = 16, 8


def features(seed=0, n=B, d=D):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, n, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  return x[0], x[1]


def test_clip_loss_is_open_clips():
  image, text = features()
  for scale in (1 / 0.07, 100.0):
    want = ClipLoss()(torch.from_numpy(image), torch.from_numpy(text), torch.tensor(scale)).item()
    np.testing.assert_allclose(losses.clip_loss(image, text, scale), want, rtol=1e-5)
  # the temperature is clamped at 100: a larger scale gives the loss at 100
  np.testing.assert_allclose(losses.clip_loss(image, text, 250.0), losses.clip_loss(image, text, 100.0), rtol=1e-6)


def test_siglip_loss_is_open_clips():
  image, text = features(1)
  for scale, bias in ((10.0, -10.0), (3.0, 0.5)):
    want = SigLipLoss()(torch.from_numpy(image), torch.from_numpy(text), torch.tensor(scale),
                        torch.tensor(bias)).item()
    np.testing.assert_allclose(losses.siglip_loss(image, text, scale, bias), want, rtol=1e-5)


@pytest.mark.parametrize("chunk", [4])
def test_chunked_equals_unchunked_with_gradients(chunk):
  image, text = features(2)
  pairs = ((functools.partial(losses.clip_loss, chunk=chunk), losses.clip_loss),
           (lambda i, t, s: losses.siglip_loss(i, t, s, -2.0, chunk=chunk),
            lambda i, t, s: losses.siglip_loss(i, t, s, -2.0)))
  for chunked, plain in pairs:
    got = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(image, text, 5.0)
    want = jax.value_and_grad(plain, argnums=(0, 1, 2))(image, text, 5.0)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="divide"):
    losses.clip_loss(image, text, 5.0, chunk=5)


def _encode(w, x):
  """A linear 'tower' with normalised output: gradients reach w through every example's features."""
  y = x @ w
  return y / jnp.linalg.norm(y, axis=-1, keepdims=True)


def _loss(name, params, xi, xt, axis_name=None, chunk=0):
  image, text = _encode(params["wi"], xi), _encode(params["wt"], xt)
  if name == "clip":
    return losses.clip_loss(image, text, jnp.exp(params["t"]), axis_name=axis_name, chunk=chunk)
  return losses.siglip_loss(image, text, jnp.exp(params["t"]), params["b"], axis_name=axis_name, chunk=chunk)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_one_device_eight_devices_and_pmap_give_the_same_loss_and_gradients(name):
  assert jax.device_count() >= 8
  rng = np.random.default_rng(3)
  xi, xt = rng.normal(size=(2, B, D)).astype(np.float32)
  params = {"wi": rng.normal(size=(D, D)).astype(np.float32), "wt": rng.normal(size=(D, D)).astype(np.float32),
            "t": np.float32(np.log(10.0)), "b": np.float32(-3.0)}
  grad_fn = jax.value_and_grad(functools.partial(_loss, name))
  want = grad_fn(params, xi, xt)

  # jit over an 8-device mesh, the batch sharded: the arrays are global, the loss is the global one
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = NamedSharding(mesh, P("data"))
  got = jax.jit(grad_fn)(params, jax.device_put(xi, sharded), jax.device_put(xt, sharded))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)

  # legacy pmap: 2 examples per device, features all-gathered, gradients averaged as the pmap runner does
  def per_device(p, i, t):
    loss, grads = jax.value_and_grad(functools.partial(_loss, name, axis_name="batch", chunk=4))(p, i, t)
    return loss, jax.lax.pmean(grads, "batch")
  loss, grads = jax.pmap(per_device, axis_name="batch", in_axes=(None, 0, 0), devices=jax.devices()[:8])(
      params, xi.reshape(8, 2, D), xt.reshape(8, 2, D))
  np.testing.assert_allclose(loss, np.full(8, want[0]), rtol=2e-5)
  for g, w in zip(jax.tree.leaves(jax.tree.map(lambda x: x[0], grads)), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)
