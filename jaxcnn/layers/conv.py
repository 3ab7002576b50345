"""The project's one convolution: every model builds its convolutions from here.

`Conv` and `ConvTranspose` keep flax's parameter names and layouts (`kernel`
HWIO, `bias`), so weights and converters see plain flax modules. They exist so
that a faster per-backend formulation lands in one place for every model.

On XLA:CPU (default backend 'cpu' when a function is traced) 2-D NHWC
convolutions take `jaxcnn.layers.cpu_conv`: float32 convolutions run on
oneDNN (the library PyTorch uses on CPU) through an XLA FFI custom call when
its extension builds (`jaxcnn.layers.onednn`); 1x1 and patchify convolutions
are matmuls; without oneDNN, depthwise convolutions are shifted multiply-adds
and the rest get a faster kernel gradient; strided transposed convolutions
get a per-phase (sub-pixel) kernel gradient. Measured in benchmarks/
(README.md there; conv_micro.py per layer, compare.py per model against
PyTorch). Every other backend, layout or option goes to `lax` unchanged.
The environment variable `JAXCNN_CPU_CONV` (read at trace time) selects:
`1`/`onednn` (default), `xla` (the pure-XLA rewrites, no oneDNN) or `0`
(plain `lax`); forward-mode autodiff (`jax.jvp`) of a CPU-traced convolution
needs `0`.
"""
from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding
from jax import lax

from jaxcnn.layers import cpu_conv


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Same contract as `lax.conv_general_dilated`; on CPU, NHWC 2-D cases take `cpu_conv`."""
  spatial = len(lhs.shape) - 2
  rhs_dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * spatial
  if (cpu_conv.enabled() and spatial == 2 and batch_group_count == 1
      and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
      and cpu_conv.is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
      and cpu_conv.supported_dtypes(lhs, rhs, preferred_element_type)):
    pads = cpu_conv.explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2], window_strides, rhs_dilation)
    return cpu_conv.conv_nhwc(lhs, rhs, tuple(window_strides), pads, rhs_dilation, feature_group_count,
                              precision, preferred_element_type)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)


class Conv(nn.Conv):
  """`flax.linen.Conv` routed through this module's `conv_general_dilated`."""
  conv_general_dilated: Optional[Callable] = conv_general_dilated


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose` (same parameters and results); faster kernel gradient on CPU.

  On CPU a 2-D transposed convolution of a single-batch-dim NHWC input (any
  stride, kernel dilation, 'SAME'/'VALID'/explicit padding, `transpose_kernel`,
  `mask`) is computed by `cpu_conv.conv_transpose_nhwc`; 'CIRCULAR' padding
  and every other backend use flax's own implementation.
  """

  def _use_cpu_path(self, inputs) -> bool:
    kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    return (cpu_conv.enabled() and len(kernel_size) == 2 and inputs.ndim == 4
            and canonicalize_padding(self.padding, 2) != "CIRCULAR")

  @nn.compact
  def __call__(self, inputs):
    if not self._use_cpu_path(inputs):
      return super().__call__(inputs)
    kernel_size = tuple(self.kernel_size)
    expand = lambda v: (1, 1) if v is None else ((v, v) if isinstance(v, int) else tuple(v))
    strides, dilation = expand(self.strides), expand(self.kernel_dilation)
    in_features = inputs.shape[-1]
    kernel_shape = kernel_size + ((self.features, in_features) if self.transpose_kernel
                                  else (in_features, self.features))
    if self.mask is not None and self.mask.shape != kernel_shape:
      raise ValueError(f"Mask needs to have the same shape as weights. Shapes are: {self.mask.shape}, "
                       f"{kernel_shape}")
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    if self.mask is not None:
      kernel *= self.mask
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    if self.transpose_kernel:  # as lax.conv_transpose: flip the window, swap in/out channels
      kernel = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    pads = cpu_conv.transpose_pads(kernel_size, strides, canonicalize_padding(self.padding, 2), dilation)
    if cpu_conv.supported_dtypes(inputs, kernel, self.preferred_element_type):
      y = cpu_conv.conv_transpose_nhwc(inputs, kernel, strides, pads, dilation, self.precision,
                                       self.preferred_element_type)
    else:
      y = cpu_conv.conv_transpose_reference(inputs, kernel, strides, pads, dilation, self.precision,
                                            self.preferred_element_type)
    if bias is not None:
      y += bias.reshape((1, 1, 1, -1))
    return y
