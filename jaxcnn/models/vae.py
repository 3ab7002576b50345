"""Convolutional variational autoencoder (Kingma & Welling 2014), laid out as the flax VAE example with convolutions.

    encoder: [Conv 4x4/2 -> ReLU] x len(widths) -> flatten -> Dense(hidden) -> ReLU -> Dense(latents) x 2
    decoder: Dense(hidden) -> ReLU -> Dense(s/2^n * s/2^n * widths[-1]) -> ReLU
             -> [ConvTranspose 4x4/2 -> ReLU] x (n - 1) -> ConvTranspose(channels) 4x4/2

`encode` gives the posterior's mean and log-variance, `decode` the likelihood's
parameters per pixel (Bernoulli logits or Gaussian means: the task decides how
to read them), and `__call__` chains the two through the reparameterisation
z = mean + exp(logvar / 2) * eps with eps drawn from an explicit PRNG key
(without a key it decodes the mean, which needs no randomness).

Registered: `conv_vae`.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, ConvTranspose
from jaxcnn.registry import register_model


def reparameterize(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A sample of N(mean, exp(logvar)) that is differentiable in mean and logvar."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) in nats, summed over the last axis (closed form)."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


@register_model("conv_vae")
class ConvVAE(nn.Module):
  """A VAE over `image_size` x `image_size` x `channels` images with a `latents`-dimensional code."""
  num_classes: int = 0          # unused: the VAE is unconditional (every registered model has the field)
  latents: int = 16
  widths: Sequence[int] = (32, 64)
  hidden: int = 256
  image_size: int = 32
  channels: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    n = len(self.widths)
    if n < 1 or self.image_size % (2 ** n):
      raise UserError(f"conv_vae: image_size ({self.image_size}) must be divisible by 2^len(widths) = {2 ** n}")
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.enc_convs = [Conv(w, (4, 4), (2, 2), padding="SAME", name=f"enc_conv{i}", **layer)
                      for i, w in enumerate(self.widths)]
    self.enc_hidden = nn.Dense(self.hidden, name="enc_hidden", **layer)
    self.enc_mean = nn.Dense(self.latents, name="enc_mean", **layer)
    self.enc_logvar = nn.Dense(self.latents, name="enc_logvar", **layer)
    self.base = self.image_size // 2 ** n
    self.dec_hidden = nn.Dense(self.hidden, name="dec_hidden", **layer)
    self.dec_project = nn.Dense(self.base * self.base * self.widths[-1], name="dec_project", **layer)
    out_widths = list(reversed(self.widths[:-1])) + [self.channels]
    self.dec_convs = [ConvTranspose(w, (4, 4), (2, 2), padding="SAME", name=f"dec_conv{i}", **layer)
                      for i, w in enumerate(out_widths)]

  def encode(self, x: jax.Array):
    """Images [B, H, W, C] -> posterior (mean, logvar), each [B, latents], in float32."""
    h = x.astype(self.dtype)
    for conv in self.enc_convs:
      h = nn.relu(conv(h))
    h = nn.relu(self.enc_hidden(h.reshape((h.shape[0], -1))))
    return self.enc_mean(h).astype(jnp.float32), self.enc_logvar(h).astype(jnp.float32)

  def decode(self, z: jax.Array):
    """Codes [B, latents] -> per-pixel likelihood parameters [B, H, W, C] in float32."""
    h = nn.relu(self.dec_hidden(z.astype(self.dtype)))
    h = nn.relu(self.dec_project(h)).reshape((z.shape[0], self.base, self.base, self.widths[-1]))
    for i, conv in enumerate(self.dec_convs):
      h = conv(h)
      if i < len(self.dec_convs) - 1:
        h = nn.relu(h)
    return h.astype(jnp.float32)

  def __call__(self, x: jax.Array, z_rng: Optional[jax.Array] = None, train: bool = False):
    """(decoder output, mean, logvar); z is sampled with `z_rng`, or is the mean when it is None."""
    del train  # no dropout or BatchNorm: train and eval compute the same function
    mean, logvar = self.encode(x)
    z = mean if z_rng is None else reparameterize(z_rng, mean, logvar)
    return self.decode(z), mean, logvar
