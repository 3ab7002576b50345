"""The project's one convolution: every model builds its convolutions from here.

`Conv` and `ConvTranspose` keep flax's parameter names and layouts (`kernel`
HWIO, `bias`), so weights and converters see plain flax modules. They exist so
that a faster per-backend formulation (XLA:CPU computes convolution weight
gradients 5-30x slower than it could, see PERF-NOTES) lands in one place for
every model: `conv_general_dilated` below is that place.
"""
from typing import Callable, Optional

import flax.linen as nn
import jax
from jax import lax


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Same contract as `lax.conv_general_dilated`; the hook for faster lowerings."""
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)


class Conv(nn.Conv):
  """`flax.linen.Conv` routed through this module's `conv_general_dilated`."""
  conv_general_dilated: Optional[Callable] = conv_general_dilated


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose` (same parameters); the hook for a sub-pixel lowering."""
