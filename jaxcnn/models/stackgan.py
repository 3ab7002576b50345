"""StackGAN (Zhang et al. 2017, "StackGAN: Text to Photo-realistic Image Synthesis with Stacked GANs").

Conditioning is one embedding vector per image: a char-CNN-RNN text embedding
(1024-d for CUB-200) or, offline, a class-label embedding. Every generator starts
with Conditioning Augmentation (`CondAugment`): the embedding gives the mean
and log-variance of a Gaussian, the condition c is sampled from it with an
explicit PRNG key (the mean when no key is given), and the task adds
KL(N(mu, sigma^2) || N(0, I)) to the generator loss.

Stage I (`stackgan_stage1`, 64x64 in the paper):
  G: [z, c] -> Dense -> BN -> ReLU -> 4x4 x (gf_dim * 2^(k-1)) -> k up-blocks
     (nearest x2, 3x3 conv, BN, ReLU; widths halve) -> 3x3 conv -> tanh
  D: k stride-2 4x4 convs (BN after all but the first, LeakyReLU 0.2) to 4x4,
     the embedding compressed by Dense(ef_dim) + LeakyReLU and tiled 4x4,
     concatenated, 3x3 conv + BN + LeakyReLU, 4x4 VALID conv -> one logit.
Stage II (`stackgan_stage2`, 64 -> 256 in the paper):
  G: the Stage-I image -> 3x3 conv, `encoder_downs` stride-2 4x4 convs (the
     paper's 2: 64 -> 16, widths doubling to 4 * gf_dim) -> joined with the
     tiled condition by a 3x3 conv -> `r_num` residual blocks -> up-blocks
     (widths halving) to `image_size` -> 3x3 conv -> tanh
  D: as Stage I with more stride-2 convs, 3x3 convs bringing the width back
     to 8 * df_dim, and a second, unconditional logit (as the authors' PyTorch
     code; the task uses it when `stackgan.uncond_coeff > 0`).
k = log2(image_size / 4); the widths follow the authors' PyTorch code (GF_DIM
128, DF_DIM 64, CONDITION_DIM 128, R_NUM 4 at 64/256) and are fields, so a
small version (e.g. 16 -> 32) trains on a CPU. Initialisation as the authors':
weights N(0, 0.02), BatchNorm scale N(1, 0.02); layers followed by BatchNorm
have no bias. Conditioning Augmentation is Dense -> GLU -> (mu, logvar) as in
StackGAN++, so the log-variance is not clamped at 0 as the ReLU of the first
PyTorch code does.

Both pairs keep the generator/discriminator layout of `jaxcnn.models.gan`:
`generate(...) -> (images, mu, logvar)`, `discriminate(images, embedding)
-> (cond_logits, uncond_logits or None)`, each [B].
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv
from jaxcnn.models.gan import dcgan_init, dcgan_scale_init, num_doublings
from jaxcnn.models.vae import reparameterize
from jaxcnn.registry import register_model


def _batch_norm(train, bn_axis_name, dtype, param_dtype, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=dcgan_scale_init,
                      axis_name=bn_axis_name, dtype=dtype, param_dtype=param_dtype, name=name)


def upsample_nearest(x):
  """x2 nearest-neighbour upsampling by broadcast + reshape: its gradient is a sum, not a scatter."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape((b, 2 * h, 2 * w, c))


def _tile(vector, size):
  """[B, C] -> [B, size, size, C]: a condition replicated over space."""
  return jnp.broadcast_to(vector[:, None, None, :], (vector.shape[0], size, size, vector.shape[-1]))


class CondAugment(nn.Module):
  """Embedding -> (c, mu, logvar): Conditioning Augmentation."""
  c_dim: int = 128
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedding, rng: Optional[jax.Array] = None):
    h = nn.Dense(4 * self.c_dim, kernel_init=dcgan_init, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc")(embedding.astype(self.dtype))
    h = nn.glu(h, axis=-1).astype(jnp.float32)
    mu, logvar = h[:, :self.c_dim], h[:, self.c_dim:]
    c = mu if rng is None else reparameterize(rng, mu, logvar)
    return c, mu, logvar


class _Layers(nn.Module):
  """Blocks shared by the StackGAN networks."""
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def conv(self, features, kernel, stride=1, bias=False, name=None):
    pad = ((1, 1), (1, 1))  # 3x3/1 keeps the size, 4x4/2 halves it, as padding=1 in the reference
    return Conv(features, (kernel, kernel), (stride, stride), padding=pad, use_bias=bias, kernel_init=dcgan_init,
                dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def norm(self, train, name):
    return _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype, name)

  def up_block(self, h, features, train, name):
    """Nearest-neighbour x2, 3x3 conv, BN, ReLU."""
    h = upsample_nearest(h)
    return nn.relu(self.norm(train, f"{name}_bn")(self.conv(features, 3, name=name)(h)))


class Stage1Generator(_Layers):
  gf_dim: int = 128
  c_dim: int = 128
  image_size: int = 64
  channels: int = 3

  @nn.compact
  def __call__(self, z, embedding, ca_rng=None, train: bool = False):
    k = num_doublings(self.image_size, "stackgan_stage1")
    c, mu, logvar = CondAugment(self.c_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="ca")(embedding, ca_rng)
    width = self.gf_dim * 2 ** (k - 1)
    h = jnp.concatenate([z.astype(self.dtype), c.astype(self.dtype)], axis=-1)
    h = nn.Dense(16 * width, use_bias=False, kernel_init=dcgan_init, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc")(h)
    h = nn.relu(self.norm(train, "fc_bn")(h)).reshape((z.shape[0], 4, 4, width))
    for i in range(k):
      width = max(width // 2, 1)
      h = self.up_block(h, width, train, f"up{i}")
    img = jnp.tanh(self.conv(self.channels, 3, name="img")(h).astype(jnp.float32))
    return img, mu, logvar


class ResBlock(_Layers):
  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    h = nn.relu(self.norm(train, "bn1")(self.conv(c, 3, name="conv1")(x)))
    h = self.norm(train, "bn2")(self.conv(c, 3, name="conv2")(h))
    return nn.relu(h + x)


class Stage2Generator(_Layers):
  gf_dim: int = 128
  c_dim: int = 128
  r_num: int = 4
  encoder_downs: int = 2
  lowres_size: int = 64
  image_size: int = 256
  channels: int = 3

  @nn.compact
  def __call__(self, lowres, embedding, ca_rng=None, train: bool = False):
    downs = self.encoder_downs
    inner = self.lowres_size // 2 ** downs
    ups = (self.image_size // max(inner, 1)).bit_length() - 1
    if downs < 1 or inner * 2 ** downs != self.lowres_size or inner * 2 ** ups != self.image_size \
        or self.image_size <= self.lowres_size:
      raise UserError(f"stackgan_stage2: lowres_size ({self.lowres_size}) must be divisible by 2^encoder_downs "
                      f"({2 ** downs}) and image_size ({self.image_size}) must be lowres_size times a power of 2 >= 2")
    width = self.gf_dim
    h = nn.relu(self.conv(width, 3, name="enc0")(lowres.astype(self.dtype)))
    for i in range(1, downs + 1):
      width *= 2
      h = nn.relu(self.norm(train, f"enc{i}_bn")(self.conv(width, 4, 2, name=f"enc{i}")(h)))
    c, mu, logvar = CondAugment(self.c_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="ca")(embedding, ca_rng)
    h = jnp.concatenate([h, _tile(c.astype(self.dtype), inner)], axis=-1)
    h = nn.relu(self.norm(train, "joint_bn")(self.conv(width, 3, name="joint")(h)))
    layers = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.r_num):
      h = ResBlock(name=f"res{i}", **layers)(h, train)
    for i in range(ups):
      width = max(width // 2, 1)
      h = self.up_block(h, width, train, f"up{i}")
    img = jnp.tanh(self.conv(self.channels, 3, name="img")(h).astype(jnp.float32))
    return img, mu, logvar


class StackGANDiscriminator(_Layers):
  """Image -> 4x4 code; (conditional logit, unconditional logit or None)."""
  df_dim: int = 64
  ef_dim: int = 128
  image_size: int = 64
  uncond: bool = False

  @nn.compact
  def __call__(self, x, embedding, train: bool = False):
    k = num_doublings(self.image_size, "stackgan discriminator")
    h = x.astype(self.dtype)
    for i in range(k):
      h = self.conv(self.df_dim * 2 ** i, 4, 2, bias=i == 0, name=f"down{i}")(h)
      if i > 0:
        h = self.norm(train, f"down{i}_bn")(h)
      h = nn.leaky_relu(h, 0.2)
    j = 0
    while h.shape[-1] > 8 * self.df_dim:  # Stage II: 3x3 convs back to 8 * df_dim channels
      h = nn.leaky_relu(self.norm(train, f"reduce{j}_bn")(self.conv(h.shape[-1] // 2, 3, name=f"reduce{j}")(h)), 0.2)
      j += 1
    e = nn.Dense(self.ef_dim, kernel_init=dcgan_init, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="embed")(embedding.astype(self.dtype))
    hc = jnp.concatenate([h, _tile(nn.leaky_relu(e, 0.2), 4)], axis=-1)
    hc = nn.leaky_relu(self.norm(train, "joint_bn")(self.conv(h.shape[-1], 3, name="joint")(hc)), 0.2)
    logit = functools.partial(Conv, 1, (4, 4), padding="VALID", kernel_init=dcgan_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    cond = logit(name="cond_logit")(hc).reshape((x.shape[0],)).astype(jnp.float32)
    uncond = logit(name="uncond_logit")(h).reshape((x.shape[0],)).astype(jnp.float32) if self.uncond else None
    return cond, uncond


class _StackGANPair(nn.Module):

  def discriminate(self, x, embedding, train: bool = False):
    return self.discriminator(x, embedding, train=train)

  def generate(self, inputs, embedding, ca_rng=None, train: bool = False):
    """(images, mu, logvar) from z (Stage I) or the Stage-I images (Stage II)."""
    return self.generator(inputs, embedding, ca_rng, train=train)

  def __call__(self, inputs, embedding, train: bool = False):
    return self.discriminate(self.generate(inputs, embedding, train=train)[0], embedding, train)


@register_model("stackgan_stage1")
class StackGANStage1(_StackGANPair):
  """Stage-I pair: noise + condition -> `image_size` images (64 in the paper)."""
  num_classes: int = 0          # unused: the condition is the embedding vector
  latent_dim: int = 100
  c_dim: int = 128
  gf_dim: int = 128
  df_dim: int = 64
  ef_dim: int = 128
  image_size: int = 64
  channels: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = Stage1Generator(gf_dim=self.gf_dim, c_dim=self.c_dim, image_size=self.image_size,
                                     channels=self.channels, **kw)
    self.discriminator = StackGANDiscriminator(df_dim=self.df_dim, ef_dim=self.ef_dim, image_size=self.image_size,
                                               uncond=False, **kw)


@register_model("stackgan_stage2")
class StackGANStage2(_StackGANPair):
  """Stage-II pair: Stage-I images + condition -> `image_size` images (64 -> 256 in the paper)."""
  num_classes: int = 0          # unused: the condition is the embedding vector
  c_dim: int = 128
  gf_dim: int = 128
  df_dim: int = 64
  ef_dim: int = 128
  r_num: int = 4
  encoder_downs: int = 2
  lowres_size: int = 64
  image_size: int = 256
  channels: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = Stage2Generator(gf_dim=self.gf_dim, c_dim=self.c_dim, r_num=self.r_num,
                                     encoder_downs=self.encoder_downs, lowres_size=self.lowres_size, image_size=self.image_size,
                                     channels=self.channels, **kw)
    self.discriminator = StackGANDiscriminator(df_dim=self.df_dim, ef_dim=self.ef_dim, image_size=self.image_size,
                                               uncond=True, **kw)
