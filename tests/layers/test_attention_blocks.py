"""make_attention: names, construction-time widths, errors, and the ResNet-50 parameter budget per block type."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers.attention_blocks import make_attention
from jaxcnn.layers.channel_attention import (EfficientChannelAttention, GlobalSecondOrderPooling,
                                             SqueezeExcitation)
from jaxcnn.layers.spatial_attention import CBAM
from jaxcnn.utils import param_count

RESNET50_PARAMS = 25_557_032
# ResNet-50 bottleneck output widths and block counts per stage.
RESNET50_BLOCKS = ((256, 3), (512, 4), (1024, 6), (2048, 3))


def block_params(name, channels, **kwargs):
  module = make_attention(name, channels, **kwargs)
  x = jax.ShapeDtypeStruct((1, 7, 7, channels), jnp.float32)
  return param_count(jax.eval_shape(module.init, jax.random.key(0), x)["params"])


def test_names_give_the_blocks():
  assert isinstance(make_attention("se", 64), SqueezeExcitation)
  assert isinstance(make_attention("eca", 64), EfficientChannelAttention)
  assert isinstance(make_attention("cbam", 64), CBAM)
  assert isinstance(make_attention("gsop", 64), GlobalSecondOrderPooling)
  assert make_attention(None, 64) is None and make_attention("none", 64) is None


def test_channels_fix_the_width_dependent_options():
  assert make_attention("se", 256).rd_channels == 16
  assert make_attention("se", 64).rd_channels == 8       # timm: at least 8
  assert make_attention("se", 256, rd_channels=32).rd_channels == 32
  assert make_attention("eca", 2048).kernel_size == 7
  assert make_attention("eca", 2048, kernel_size=3).kernel_size == 3
  assert make_attention("se").rd_channels is None          # left to the input


def test_unknown_name_and_bad_channels_are_user_errors():
  with pytest.raises(UserError, match="did you mean se"):
    make_attention("see", 64)
  with pytest.raises(UserError, match="channels"):
    make_attention("se", 0)


@pytest.mark.parametrize("name,expected", [
    ("se", 28_088_024),    # timm seresnet50 / the SE paper's 28.1M
    ("eca", 25_557_118),   # ECA-Net50 "25.56M": 86 extra parameters (k = 5, 5, 5, 7)
    ("cbam", 28_089_624),  # the CBAM paper's ResNet50 + CBAM, 28.09M
])
def test_resnet50_budget(name, expected):
  extra = sum(count * block_params(name, channels) for channels, count in RESNET50_BLOCKS)
  assert RESNET50_PARAMS + extra == expected


def test_norm_and_axis_name_are_dropped_for_blocks_without_bn_and_used_otherwise():
  norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5)
  x = jnp.ones((2, 4, 4, 16))
  se = make_attention("se", 16, norm=norm, bn_axis_name="batch", name="se")
  assert se.name == "se"
  chex.assert_shape(se.apply(se.init(jax.random.key(0), x), x), x.shape)
  cbam = make_attention("cbam", 16, norm=norm)
  variables = cbam.init(jax.random.key(0), x)
  # The given norm (training mode) updates batch statistics without a `train` argument.
  _, updates = cbam.apply(variables, x, mutable=["batch_stats"])
  assert "spatial" in updates["batch_stats"]
