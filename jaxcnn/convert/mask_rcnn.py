"""torchvision Mask R-CNN's mask branch -> `jaxcnn.models.mask_rcnn` variables.

  <prefix>.mask_head.i.0                 -> <path>/mask_head/conv_i           (3x3 conv with bias)
  <prefix>.mask_predictor.conv5_mask     -> <path>/mask_predictor/conv5_mask  (ConvTranspose2d: torch's
                                            (in, out, kh, kw) -> HWIO with the window flipped, since flax's
                                            ConvTranspose does not flip the kernel)
  <prefix>.mask_predictor.mask_fcn_logits -> <path>/mask_predictor/mask_fcn_logits
"""
import numpy as np

from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
  """torch ConvTranspose2d weight (in, out, kh, kw) -> flax ConvTranspose kernel (kh, kw, in, out), flipped."""
  return np.ascontiguousarray(np.flip(np.transpose(w, (2, 3, 0, 1)), (0, 1)))


def mask_branch(variables: FlaxVariables, weights: TorchWeights, prefix: str = "roi_heads", path: tuple = ()):
  """The mask head and predictor under torch `prefix` -> flax `path` (see the module docstring)."""
  i = 0
  while weights.has(f"{prefix}.mask_head.{i}.0.weight"):
    variables.put(path + ("mask_head", f"conv_{i}"), weights.conv(f"{prefix}.mask_head.{i}.0"))
    i += 1
  deconv = f"{prefix}.mask_predictor.conv5_mask"
  variables.put(path + ("mask_predictor", "conv5_mask"),
                {"kernel": conv_transpose_kernel(weights.take(f"{deconv}.weight")),
                 "bias": weights.take(f"{deconv}.bias")})
  variables.put(path + ("mask_predictor", "mask_fcn_logits"),
                weights.conv(f"{prefix}.mask_predictor.mask_fcn_logits"))
