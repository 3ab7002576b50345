"""StackGAN++ (Zhang et al. 2018, "StackGAN++: Realistic Image Synthesis with Stacked Generative Adversarial
Networks", TPAMI): one generator tree, one discriminator per scale, trained jointly.

Generator (`TreeGenerator`), at the paper's sizes (base_size 64, num_branches 3, gf_dim 64, c_dim 128, r_num 2):
  Conditioning Augmentation: embedding -> Dense(4 c_dim) -> GLU -> (mu, logvar), c = mu + sigma * eps
  trunk:  [c, z] -> Dense -> BN -> GLU -> 4x4 x (16 gf_dim) -> k up-blocks to base_size x base_size x gf_dim
          (k = log2(base_size / 4); an up-block is nearest x2, 3x3 conv to 2w, BN, GLU -> w, widths halving)
  branch i (i = 1 .. num_branches - 1), on the previous branch's hidden code h (width w):
          [c tiled, h] -> 3x3 conv to 2w, BN, GLU -> r_num residual blocks -> up-block to w / 2, twice the size
          (residual block: 3x3 conv to 2w, BN, GLU, 3x3 conv to w, BN, plus the input; no activation after)
  images: after the trunk and after every branch, 3x3 conv -> tanh; `generate` returns them smallest first
          (64, 128, 256 in the paper).
The trunk starts at gf_dim * 2^k channels so that it ends at gf_dim whatever base_size is (16 gf_dim at 64).

Discriminators (`MultiScaleDiscriminator` holding D_0 .. D_{n-1}, one per scale s = base_size * 2^i):
  log2(s / 4) stride-2 4x4 convs (widths df_dim, 2 df_dim, ...; BN after all but the first; LeakyReLU 0.2)
  to a 4x4 code, then 3x3 conv + BN + LeakyReLU halving the width while it is above 8 df_dim (D_128: one,
  D_256: two, as the authors); unconditional logit: 4x4 conv on the code; conditional logit: the condition
  tiled 4x4 and joined with the code by 3x3 conv + BN + LeakyReLU (back to the code's width), then a 4x4 conv.
  As the authors' trainer, D's condition is the Conditioning Augmentation mean mu of the generator (c_dim wide,
  no embedding layer in D): `discriminate(images, condition)` takes it from the task.

Initialisation as the authors' StackGAN-v2 code: conv and Dense kernels orthogonal (gain 1), biases 0,
BatchNorm scale N(1, 0.02). Layers followed by BatchNorm have no bias; the convs of D's encoder have none either
(as the authors); the logit convs and the CA's Dense have one.
"""
from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv
from jaxcnn.models.gan import dcgan_scale_init
from jaxcnn.models.stackgan import upsample_nearest
from jaxcnn.models.vae import reparameterize
from jaxcnn.registry import register_model

orthogonal_init = nn.initializers.orthogonal()  # a kernel [.., in, out] is an orthogonal (prod(..) * in, out) matrix


def tile(vector, size):
  """[B, C] -> [B, size, size, C]: the condition replicated over space."""
  return jnp.broadcast_to(vector[:, None, None, :], (vector.shape[0], size, size, vector.shape[-1]))


def scale_sizes(base_size: int, num_branches: int) -> Tuple[int, ...]:
  """Image sizes of the tree, smallest first: base_size * 2^i."""
  return tuple(base_size * 2 ** i for i in range(num_branches))


def check_sizes(base_size: int, num_branches: int):
  k = (base_size // 4).bit_length() - 1
  if base_size < 8 or 4 * 2 ** k != base_size or num_branches < 1:
    raise UserError(f"stackganpp: base_size must be 4 * 2^k with k >= 1 (8, 16, 32, 64, ...) and num_branches >= 1, "
                    f"got base_size={base_size}, num_branches={num_branches}")
  return k


class _Blocks(nn.Module):
  """Layers of both networks (BatchNorm as torchvision: momentum 0.9, epsilon 1e-5)."""
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def conv(self, features, kernel, stride=1, bias=False, padding=((1, 1), (1, 1)), name=None):
    return Conv(features, (kernel, kernel), (stride, stride), padding=padding, use_bias=bias,
                kernel_init=orthogonal_init, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def norm(self, train, name):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=dcgan_scale_init,
                        axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def conv_glu(self, h, features, train, name):
    """3x3 conv to 2 x features, BN, GLU: the generator's activation is a gate, not a ReLU."""
    return nn.glu(self.norm(train, f"{name}_bn")(self.conv(2 * features, 3, name=name)(h)), axis=-1)

  def up_block(self, h, features, train, name):
    return self.conv_glu(upsample_nearest(h), features, train, name)

  def conv_bn_lrelu(self, h, features, kernel, stride, train, name, norm=True):
    h = self.conv(features, kernel, stride, name=name)(h)
    if norm:
      h = self.norm(train, f"{name}_bn")(h)
    return nn.leaky_relu(h, 0.2)


class CondAugmentGLU(nn.Module):
  """Embedding -> (c, mu, logvar): Dense(4 c_dim) -> GLU -> mu | logvar; c sampled with `rng`, mu without."""
  c_dim: int = 128
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedding, rng: Optional[jax.Array] = None):
    h = nn.Dense(4 * self.c_dim, kernel_init=orthogonal_init, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc")(embedding.astype(self.dtype))
    h = nn.glu(h, axis=-1).astype(jnp.float32)
    mu, logvar = h[:, :self.c_dim], h[:, self.c_dim:]
    c = mu if rng is None else reparameterize(rng, mu, logvar)
    return c, mu, logvar


class GLUResBlock(_Blocks):
  @nn.compact
  def __call__(self, x, train: bool = False):
    w = x.shape[-1]
    h = self.conv_glu(x, w, train, "conv1")
    h = self.norm(train, "conv2_bn")(self.conv(w, 3, name="conv2")(h))
    return h + x


class _Tree(_Blocks):
  """Trunk and branches: (z, c) -> [images per scale, smallest first]."""
  gf_dim: int = 64
  r_num: int = 2
  base_size: int = 64
  num_branches: int = 3
  channels: int = 3

  def image(self, h, name):
    return jnp.tanh(self.conv(self.channels, 3, name=name)(h).astype(jnp.float32))

  @nn.compact
  def __call__(self, z, c, train: bool = False):
    k = check_sizes(self.base_size, self.num_branches)
    c = c.astype(self.dtype)
    width = self.gf_dim * 2 ** k
    h = nn.Dense(2 * 16 * width, use_bias=False, kernel_init=orthogonal_init, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="fc")(jnp.concatenate([c, z.astype(self.dtype)], axis=-1))
    h = nn.glu(self.norm(train, "fc_bn")(h), axis=-1).reshape((z.shape[0], 4, 4, width))
    for i in range(k):
      width = max(width // 2, 1)
      h = self.up_block(h, width, train, f"trunk_up{i}")
    images = [self.image(h, "img0")]
    layers = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    for b in range(1, self.num_branches):
      h = jnp.concatenate([tile(c, h.shape[1]), h], axis=-1)
      h = self.conv_glu(h, width, train, f"branch{b}_joint")
      for r in range(self.r_num):
        h = GLUResBlock(name=f"branch{b}_res{r}", **layers)(h, train)
      width = max(width // 2, 1)
      h = self.up_block(h, width, train, f"branch{b}_up")
      images.append(self.image(h, f"img{b}"))
    return images


class TreeGenerator(nn.Module):
  """Conditioning Augmentation (`ca`) feeding the generator tree (`tree`)."""
  gf_dim: int = 64
  c_dim: int = 128
  r_num: int = 2
  base_size: int = 64
  num_branches: int = 3
  channels: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.ca = CondAugmentGLU(self.c_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    self.tree = _Tree(gf_dim=self.gf_dim, r_num=self.r_num, base_size=self.base_size, num_branches=self.num_branches,
                      channels=self.channels, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                      param_dtype=self.param_dtype)

  def condition(self, embedding):
    """The Conditioning Augmentation mean mu."""
    return self.ca(embedding)[1]

  def __call__(self, z, embedding, ca_rng=None, train: bool = False):
    c, mu, logvar = self.ca(embedding, ca_rng)
    return self.tree(z, c, train=train), mu, logvar


class ScaleDiscriminator(_Blocks):
  """One scale's D: image -> (conditional logit [B], unconditional logit [B])."""
  df_dim: int = 64
  image_size: int = 64

  @nn.compact
  def __call__(self, x, condition, train: bool = False):
    downs = (self.image_size // 4).bit_length() - 1
    h = x.astype(self.dtype)
    for i in range(downs):
      h = self.conv_bn_lrelu(h, self.df_dim * 2 ** i, 4, 2, train, f"down{i}", norm=i > 0)
    j = 0
    while h.shape[-1] > 8 * self.df_dim:
      h = self.conv_bn_lrelu(h, h.shape[-1] // 2, 3, 1, train, f"reduce{j}")
      j += 1
    hc = jnp.concatenate([tile(condition.astype(self.dtype), 4), h], axis=-1)
    hc = self.conv_bn_lrelu(hc, h.shape[-1], 3, 1, train, "joint")
    n = x.shape[0]
    cond = self.conv(1, 4, 4, bias=True, padding="VALID", name="cond_logit")(hc)
    uncond = self.conv(1, 4, 4, bias=True, padding="VALID", name="uncond_logit")(h)
    return cond.reshape((n,)).astype(jnp.float32), uncond.reshape((n,)).astype(jnp.float32)


class MultiScaleDiscriminator(_Blocks):
  """D_0 .. D_{n-1} side by side in one module (`d0`, `d1`, ...).

  They share nothing: each loss term of the task depends on one D only, so one Adam over their union minimising
  the sum of their losses makes exactly the updates of the authors' separate per-D Adam optimizers (Adam is
  per-parameter, and the gradient of the sum with respect to D_i is the gradient of D_i's own loss). That stops
  holding if the update couples parameters, e.g. clipping by the global gradient norm (optim.grad_clip_norm).
  """
  df_dim: int = 64
  sizes: Sequence[int] = (64, 128, 256)

  @nn.compact
  def __call__(self, images: Sequence[jax.Array], condition, train: bool = False) -> List[Tuple[jax.Array, jax.Array]]:
    if len(images) != len(self.sizes):
      raise ValueError(f"{len(images)} images for {len(self.sizes)} discriminators")
    layers = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    return [ScaleDiscriminator(df_dim=self.df_dim, image_size=s, name=f"d{i}", **layers)(x, condition, train)
            for i, (s, x) in enumerate(zip(self.sizes, images))]


@register_model("stackganpp")
class StackGANpp(nn.Module):
  """Generator tree + per-scale discriminators. Images are NHWC in [-1, 1], smallest scale first."""
  num_classes: int = 0          # unused: the condition is the embedding vector
  latent_dim: int = 100
  c_dim: int = 128
  gf_dim: int = 64
  df_dim: int = 64
  r_num: int = 2
  base_size: int = 64
  num_branches: int = 3
  channels: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def sizes(self) -> Tuple[int, ...]:
    return scale_sizes(self.base_size, self.num_branches)

  def setup(self):
    check_sizes(self.base_size, self.num_branches)
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    self.generator = TreeGenerator(gf_dim=self.gf_dim, c_dim=self.c_dim, r_num=self.r_num, base_size=self.base_size,
                                   num_branches=self.num_branches, channels=self.channels, **kw)
    self.discriminator = MultiScaleDiscriminator(df_dim=self.df_dim, sizes=self.sizes, **kw)

  def generate(self, z, embedding, ca_rng=None, train: bool = False):
    """([images per scale, smallest first], mu, logvar); c is sampled with ca_rng, or is mu without it."""
    return self.generator(z, embedding, ca_rng, train=train)

  def condition(self, embedding):
    """D's condition: the Conditioning Augmentation mean mu (as the authors' trainer feeds D)."""
    return self.generator.condition(embedding)

  def discriminate(self, images, condition, train: bool = False):
    """[(conditional logits [B], unconditional logits [B]) per scale] for images smallest first."""
    return self.discriminator(images, condition, train=train)

  def __call__(self, z, embedding, train: bool = False):
    images, mu, _ = self.generate(z, embedding, train=train)
    return self.discriminate(images, mu, train=train)
