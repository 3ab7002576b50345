"""Resizing feature maps the way PyTorch's `F.interpolate(..., align_corners=False)` does.

Dense-prediction heads upsample logits to the input size; torchvision does it with
bilinear interpolation at half-pixel centres and no antialiasing. `jax.image.resize`
with `antialias=False` computes the same thing (for both up- and downsampling), so
models and tasks call this one function and match torchvision's outputs.
"""
import jax
import jax.numpy as jnp


def resize_bilinear(x: jax.Array, size) -> jax.Array:
  """[B, H, W, C] -> [B, size[0], size[1], C]; the identity when the size already matches."""
  h, w = int(size[0]), int(size[1])
  if x.shape[1:3] == (h, w):
    return x
  out = jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method="bilinear", antialias=False)
  return out.astype(x.dtype)


def resize_nearest(x: jax.Array, size) -> jax.Array:
  """Nearest-neighbour resize of [B, H, W, ...] label maps (PyTorch's `mode='nearest'`: floor(dst * in / out))."""
  h, w = int(size[0]), int(size[1])
  in_h, in_w = x.shape[1:3]
  if (in_h, in_w) == (h, w):
    return x
  rows = jnp.floor(jnp.arange(h) * (in_h / h)).astype(jnp.int32)
  cols = jnp.floor(jnp.arange(w) * (in_w / w)).astype(jnp.int32)
  return x[:, rows][:, :, cols]
