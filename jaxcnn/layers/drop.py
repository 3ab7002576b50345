"""Stochastic depth (Huang et al. 2016) as DropPath: drop a residual branch per sample.

In training each sample's branch output is zeroed with probability `rate` and
the kept ones are scaled by 1 / (1 - rate), so the expected output is the
branch output and evaluation uses the branch unchanged (torchvision's
`StochasticDepth(p, mode="row")`, timm's `DropPath`). The mask comes from the
'drop_path' rng collection, apart from dropout's, so the two can be seeded
and turned off independently.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError


def check_rate(name: str, rate: float):
  if not 0.0 <= rate <= 1.0:
    raise UserError(f"{name}={rate} must be a probability in [0, 1]")


class DropPath(nn.Module):
  """Zeroes whole samples of the input with probability `rate` (when not deterministic).

  The first axis is the batch axis; every other axis shares the sample's mask.
  """
  rate: float = 0.0
  deterministic: Optional[bool] = None
  rng_collection: str = "drop_path"

  def __post_init__(self):
    check_rate("drop path rate", self.rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, deterministic: Optional[bool] = None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    if keep == 0.0:
      return jnp.zeros_like(x)
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.bernoulli(self.make_rng(self.rng_collection), keep, mask_shape)
    return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
