"""GANs as generator/discriminator pairs: the MLP GAN (Goodfellow et al. 2014), its conditional form
(CGAN, Mirza & Osindero 2014) and DCGAN (Radford et al. 2016).

A registered model is the *pair*: one linen Module with two submodules named
`generator` and `discriminator`, so its variables are
`{'params': {'generator': ..., 'discriminator': ...}, 'batch_stats': {...}}`
and a GAN task updates one network at a time by that key. `generate(z, labels)`
maps latents [B, latent_dim] to images in [-1, 1] (tanh), `discriminate(x, labels)`
maps images to one real/fake logit each ([B]), and `__call__(z, labels)` is
D(G(z)), which creates both networks' variables at init.

Conditioning (`num_classes > 0`, CGAN): the generator sees the one-hot label
concatenated to z; the discriminator sees it concatenated to its input (to the
flattened image in the MLP, as constant feature maps next to the image
channels in DCGAN), as in Mirza & Osindero and the usual conditional DCGAN.

DCGAN follows the paper and the PyTorch example: the generator projects z to
4x4 (a Dense layer, the same map as the example's 4x4 VALID transposed
convolution on a 1x1 input) and doubles the resolution with 4x4 stride-2
transposed convolutions, BatchNorm + ReLU everywhere but the tanh output; the
discriminator halves it with 4x4 stride-2 convolutions, LeakyReLU(0.2), BatchNorm
everywhere but the first layer, and ends in a 4x4 VALID convolution to one
logit. Widths double as the resolution halves (`width` is ngf/ndf of the
example, 64 for 64x64). Layers followed by BatchNorm have no bias. The DCGAN init: weights N(0, 0.02), BatchNorm scale
N(1, 0.02), biases 0.

Registered: `gan` (MLP pair), `dcgan` (convolutional pair).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, ConvTranspose
from jaxcnn.registry import register_model

dcgan_init = nn.initializers.normal(0.02)


def dcgan_scale_init(key, shape, dtype=jnp.float32):
  """BatchNorm scale ~ N(1, 0.02), as `weights_init` of the PyTorch DCGAN example."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def one_hot_labels(labels: Optional[jax.Array], num_classes: int, dtype) -> jax.Array:
  if labels is None:
    raise UserError(f"this GAN is conditioned on {num_classes} classes: it needs labels")
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def num_doublings(image_size: int, model: str) -> int:
  """log2(image_size / 4): the stride-2 layers between 4x4 and the image."""
  n = (image_size // 4).bit_length() - 1
  if image_size < 8 or 4 * 2 ** n != image_size:
    raise UserError(f"{model}: image_size must be 4 * 2^k with k >= 1 (8, 16, 32, 64, ...), got {image_size}")
  return n


# ------------------------------------------------------------------------------ MLP GAN / CGAN

class MLPGenerator(nn.Module):
  num_classes: int = 0
  hidden: Sequence[int] = (256, 512, 1024)
  image_size: int = 28
  channels: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    h = z.astype(self.dtype)
    if self.num_classes:
      h = jnp.concatenate([h, one_hot_labels(labels, self.num_classes, self.dtype)], axis=-1)
    for i, width in enumerate(self.hidden):
      h = nn.leaky_relu(nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i}")(h), 0.2)
    size = self.image_size * self.image_size * self.channels
    h = nn.Dense(size, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)
    return jnp.tanh(h.astype(jnp.float32)).reshape((z.shape[0], self.image_size, self.image_size, self.channels))


class MLPDiscriminator(nn.Module):
  num_classes: int = 0
  hidden: Sequence[int] = (512, 256)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    h = x.reshape((x.shape[0], -1)).astype(self.dtype)
    if self.num_classes:
      h = jnp.concatenate([h, one_hot_labels(labels, self.num_classes, self.dtype)], axis=-1)
    for i, width in enumerate(self.hidden):
      h = nn.leaky_relu(nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i}")(h), 0.2)
    return nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)[:, 0].astype(jnp.float32)


class _Pair(nn.Module):
  """Shared methods of the registered generator/discriminator pairs."""

  def generate(self, z, labels=None, train: bool = False):
    return self.generator(z, labels, train=train)

  def discriminate(self, x, labels=None, train: bool = False):
    return self.discriminator(x, labels, train=train)

  def __call__(self, z, labels=None, train: bool = False):
    return self.discriminate(self.generate(z, labels, train), labels, train)


@register_model("gan")
class MLPGAN(_Pair):
  """Fully connected GAN; conditional (CGAN) when `num_classes > 0`."""
  num_classes: int = 0
  latent_dim: int = 100
  g_hidden: Sequence[int] = (256, 512, 1024)
  d_hidden: Sequence[int] = (512, 256)
  image_size: int = 28
  channels: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(num_classes=self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = MLPGenerator(hidden=self.g_hidden, image_size=self.image_size, channels=self.channels, **kw)
    self.discriminator = MLPDiscriminator(hidden=self.d_hidden, **kw)


# ------------------------------------------------------------------------------ DCGAN

class DCGANGenerator(nn.Module):
  num_classes: int = 0
  width: int = 64
  image_size: int = 64
  channels: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    n = num_doublings(self.image_size, "dcgan")
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     scale_init=dcgan_scale_init, axis_name=self.bn_axis_name,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    h = z.astype(self.dtype)
    if self.num_classes:
      h = jnp.concatenate([h, one_hot_labels(labels, self.num_classes, self.dtype)], axis=-1)
    width = self.width * 2 ** (n - 1)
    h = nn.Dense(4 * 4 * width, use_bias=False, kernel_init=dcgan_init, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="project")(h)
    h = nn.relu(norm("project_bn")(h.reshape((z.shape[0], 4, 4, width))))
    for i in range(n - 1):
      width //= 2
      h = ConvTranspose(width, (4, 4), (2, 2), padding="SAME", use_bias=False, kernel_init=dcgan_init,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=f"up{i}")(h)
      h = nn.relu(norm(f"up{i}_bn")(h))
    h = ConvTranspose(self.channels, (4, 4), (2, 2), padding="SAME", kernel_init=dcgan_init,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)
    return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
  num_classes: int = 0
  width: int = 64
  image_size: int = 64
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    n = num_doublings(self.image_size, "dcgan")
    h = x.astype(self.dtype)
    if self.num_classes:
      maps = one_hot_labels(labels, self.num_classes, self.dtype)[:, None, None, :]
      h = jnp.concatenate([h, jnp.broadcast_to(maps, h.shape[:3] + (self.num_classes,))], axis=-1)
    for i in range(n):
      h = Conv(self.width * 2 ** i, (4, 4), (2, 2), padding=((1, 1), (1, 1)), use_bias=i == 0,
               kernel_init=dcgan_init, dtype=self.dtype, param_dtype=self.param_dtype, name=f"down{i}")(h)
      if i > 0:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=dcgan_scale_init,
                         axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"down{i}_bn")(h)
      h = nn.leaky_relu(h, 0.2)
    h = Conv(1, (4, 4), padding="VALID", kernel_init=dcgan_init, dtype=self.dtype,
             param_dtype=self.param_dtype, name="out")(h)
    return h.reshape((x.shape[0],)).astype(jnp.float32)


@register_model("dcgan")
class DCGAN(_Pair):
  """Deep convolutional GAN; conditional when `num_classes > 0`."""
  num_classes: int = 0
  latent_dim: int = 100
  g_width: int = 64
  d_width: int = 64
  image_size: int = 64
  channels: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(num_classes=self.num_classes, image_size=self.image_size, bn_axis_name=self.bn_axis_name,
              dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = DCGANGenerator(width=self.g_width, channels=self.channels, **kw)
    self.discriminator = DCGANDiscriminator(width=self.d_width, **kw)
