"""Class activation maps at a target layer: Grad-CAM, Grad-CAM++, HiResCAM, Layer-CAM, Score-CAM; Guided Grad-CAM.

Each returns maps [B, h, w] at the layer's resolution, after the final ReLU and before any resizing or
normalisation, computed as pytorch-grad-cam 1.5 does (A = activation, G = d(score)/dA, sums over h, w):
  gradcam    relu(sum_k mean(G_k) A_k)                                  (Selvaraju et al. 2017)
  gradcampp  relu(sum_k w_k A_k), w_k = sum relu(G_k) a_k,
             a_k = G^2 / (2 G^2 + sum(A_k) G^3 + 1e-6), 0 where G = 0   (Chattopadhay et al. 2018, eq. 19)
  hirescam   relu(sum_k G_k A_k)                                        (Draelos & Carin 2020)
  layercam   relu(sum_k relu(G_k) A_k)                                  (Jiang et al. 2021)
  scorecam   relu(sum_k softmax_k(score(x * norm(up(A_k)))) A_k): each channel, bilinearly upsampled
             (align_corners, as torch's UpsamplingBilinear2d) and min-max normalised, masks the input
             (Wang et al. 2020); B * C forward passes, `chunk` channels at a time.
`upsample` + `normalize` make them displayable (pytorch-grad-cam's scale_cam_image order is the reverse:
min-max, then resize; identical up to interpolation overshoot).
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import unknown
from jaxcnn.explain import gradients, probe

GRADIENT_CAMS = ("gradcam", "gradcampp", "hirescam", "layercam")
CAM_METHODS = GRADIENT_CAMS + ("scorecam",)


def combine(method: str, a, g):
  """The map [B, h, w] of a gradient CAM from activation and gradient grids [B, h, w, C]."""
  if method == "gradcam":
    cam = jnp.einsum("bhwc,bc->bhw", a, jnp.mean(g, axis=(1, 2)))
  elif method == "gradcampp":
    g2 = g * g
    alpha = g2 / (2 * g2 + jnp.sum(a, axis=(1, 2), keepdims=True) * g2 * g + 1e-6)
    alpha = jnp.where(g != 0, alpha, 0.0)
    cam = jnp.einsum("bhwc,bc->bhw", a, jnp.sum(jnp.maximum(g, 0) * alpha, axis=(1, 2)))
  elif method == "hirescam":
    cam = jnp.sum(g * a, axis=-1)
  elif method == "layercam":
    cam = jnp.sum(jnp.maximum(g, 0) * a, axis=-1)
  else:
    raise unknown("gradient CAM method", method, GRADIENT_CAMS)
  return jnp.maximum(cam, 0)


def gradient_cam(model, variables, x, target, layer: str, method: str = "gradcam", forward=None):
  a, g, _ = probe.activation_and_grad(model, variables, x, target, layer, forward)
  hw = x.shape[1:3]
  return combine(method, probe.to_grid(a, hw).astype(jnp.float32), probe.to_grid(g, hw).astype(jnp.float32))


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] bilinear weights with align_corners=True."""
  pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
  hi, frac = np.minimum(lo + 1, n_in - 1), pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), lo), 1 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def score_cam(model, variables, x, target, layer: str, chunk: int = 16, forward=None):
  a = probe.to_grid(probe.layer_activation(model, variables, x, layer, forward), x.shape[1:3]).astype(jnp.float32)
  (b, h, w, c), (height, width) = a.shape, x.shape[1:3]
  up = jnp.einsum("Hh,bhwc,Ww->bHWc", _align_corners_matrix(h, height), a, _align_corners_matrix(w, width))
  lo, hi = jnp.min(up, axis=(1, 2), keepdims=True), jnp.max(up, axis=(1, 2), keepdims=True)
  masks = jnp.moveaxis((up - lo) / (hi - lo + 1e-8), -1, 0)  # [C, B, H, W]
  chunk = min(chunk, c)
  masks = jnp.pad(masks, ((0, -c % chunk), (0, 0), (0, 0), (0, 0))).reshape(-1, chunk * b, height, width)
  tiled = jax.tree.map(lambda v: jnp.tile(v, (chunk,) + (1,) * (v.ndim - 1)), target)
  xs = jnp.tile(x, (chunk, 1, 1, 1))

  def scores(m):
    return probe.scores(model, variables, (xs * m[..., None]).astype(x.dtype), tiled, forward)

  s = jax.lax.map(scores, masks).reshape(-1, b)[:c].T  # [B, C]
  return jnp.maximum(jnp.einsum("bhwc,bc->bhw", a, jax.nn.softmax(s, axis=-1)), 0)


def cam(model, variables, x, target, layer: str, method: str = "gradcam", forward=None, chunk: int = 16):
  """The `method` map [B, h, w] at `layer` (see the module docstring)."""
  if method == "scorecam":
    return score_cam(model, variables, x, target, layer, chunk, forward)
  return gradient_cam(model, variables, x, target, layer, method, forward)


def upsample(maps, hw):
  """[B, h, w] -> [B, H, W] bilinear (half-pixel centres, as cv2.resize and torch align_corners=False)."""
  return jax.image.resize(maps, (maps.shape[0], *hw), "linear")


def normalize(maps, eps: float = 1e-7):
  """Min-max per image to [0, 1] (pytorch-grad-cam's scale_cam_image)."""
  axes = tuple(range(1, maps.ndim))
  lo = jnp.min(maps, axis=axes, keepdims=True)
  return (maps - lo) / (jnp.max(maps - lo, axis=axes, keepdims=True) + eps)


def guided_gradcam(model, variables, x, target, layer: str, forward=None):
  """Guided Backprop times the normalised, upsampled Grad-CAM (Selvaraju et al. 2017): [B, H, W, C]."""
  heat = normalize(upsample(gradient_cam(model, variables, x, target, layer, "gradcam", forward), x.shape[1:3]))
  return gradients.guided_backprop(model, variables, x, target, forward) * heat[..., None]
