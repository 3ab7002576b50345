"""Zeiler & Fergus 2014's deconvnet: a layer's strongest activation projected back to pixel space.

"To examine a given convnet activation, we set all other activations in the layer to zero and pass the
feature maps as input to the attached deconvnet layer": unpooling with the max-pool switches, rectification
of the signal, filtering with the transposed filters, down to the pixels. That is the backward pass of the
network (the gradient of a max-pool routes to the recorded argmax, the switch; a convolution's backward
applies its transposed filters) with one change: ReLU passes relu(signal) instead of masking by the
forward activation (`gradients.with_relu_backward(fn, 'deconvnet')`). Biases play no part, as in theirs.

`top_activations` builds the paper's figures: for each chosen channel of a layer, the 9 images of a set
with the strongest activation of that channel, each projected from its single strongest position, shown
beside the image patch under the projection's support.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.explain import gradients, probe


def strongest_only(a, channel):
  """`a` [B, ..., C] zero but each image's largest value (within `channel`, or anywhere if channel < 0)."""
  b, c = a.shape[0], a.shape[-1]
  flat = a.reshape(b, -1)
  in_channel = (jnp.arange(flat.shape[1]) % c) == channel
  masked = jnp.where((channel < 0) | in_channel[None], flat, -jnp.inf)
  idx = jnp.argmax(masked, axis=1)
  keep = jax.nn.one_hot(idx, flat.shape[1], dtype=a.dtype) * jnp.take_along_axis(flat, idx[:, None], axis=1)
  return keep.reshape(a.shape)


def project(model, variables, x, target=None, layer: str = "", channel=-1, forward=None):
  """Deconvnet reconstruction [B, H, W, C] of each image's strongest activation at `layer` (of `channel`
  when >= 0). `target` is unused (the method looks at a feature map, not at an output)."""
  del target
  forward = forward or probe.apply_fn(model)
  activation = gradients.with_relu_backward(
      lambda x: probe.layer_activation(model, variables, x, layer, forward), "deconvnet")
  a, pullback = jax.vjp(activation, x)
  return pullback(strongest_only(a, jnp.asarray(channel)))[0]


_project = jax.jit(project, static_argnames=("model", "layer", "forward"))


@jax.jit
def _channel_max(a):
  return jnp.max(a.reshape(a.shape[0], -1, a.shape[-1]), axis=1)


def channel_maxima(model, variables, images, layer: str, batch: int = 64) -> np.ndarray:
  """[N, C] each image's maximum activation per channel of `layer`."""
  fn = jax.jit(lambda v, x: _channel_max(probe.layer_activation(model, variables=v, x=x, layer=layer)))
  return np.concatenate([np.asarray(fn(variables, images[i:i + batch])) for i in range(0, len(images), batch)])


def support_crops(projections: np.ndarray, *images: np.ndarray, rel: float = 1e-3):
  """Each of `images` ([k, H, W, C] arrays) cut to the projections' support: one square of the largest
  support's size (|projection| beyond rel * its max), centred on each projection's support box."""
  boxes = []
  for p in np.abs(projections).max(axis=-1):
    ys, xs = np.nonzero(p > rel * max(p.max(), 1e-12))
    boxes.append((ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if len(ys) else (0, p.shape[0], 0, p.shape[1]))
  h, w = projections.shape[1:3]
  size = min(max(max(b[1] - b[0], b[3] - b[2]) for b in boxes), h, w)
  corners = [(int(np.clip((y0 + y1 - size) // 2, 0, h - size)), int(np.clip((x0 + x1 - size) // 2, 0, w - size)))
             for y0, y1, x0, x1 in boxes]
  return [np.stack([im[t:t + size, l:l + size] for im, (t, l) in zip(arr, corners)]) for arr in images]


def top_activations(model, variables, images: np.ndarray, layer: str, channels, k: int = 9, batch: int = 64,
                    maxima=None):
  """{channel: (image indices [k], projections [k, H, W, C])}: the `k` images of `images` whose `channel`
  activation is strongest, each projected from that channel's strongest position (`maxima`: channel_maxima's
  result, if already computed)."""
  maxima = channel_maxima(model, variables, images, layer, batch) if maxima is None else maxima
  out = {}
  for ch in channels:
    top = np.argsort(-maxima[:, ch], kind="stable")[:k]
    out[int(ch)] = (top, np.asarray(_project(model, variables, jnp.asarray(images[top]), layer=layer,
                                             channel=jnp.asarray(ch))))
  return out
