"""torchvision Mask R-CNN state dicts -> `jaxcnn.models.mask_rcnn.MaskRCNN` variables.

  everything of Faster R-CNN               -> as `jaxcnn.convert.rcnn.faster_rcnn_parts`
  roi_heads.mask_head.i.0                  -> mask_head/conv_i           (3x3 conv with bias)
  roi_heads.mask_predictor.conv5_mask      -> mask_predictor/conv5_mask  (ConvTranspose2d: torch's
                                              (in, out, kh, kw) -> HWIO with the window flipped, since flax's
                                              ConvTranspose does not flip the kernel)
  roi_heads.mask_predictor.mask_fcn_logits -> mask_predictor/mask_fcn_logits
"""
import numpy as np

from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.convert.rcnn import faster_rcnn_parts

TORCHVISION_MODELS = ("maskrcnn_resnet50_fpn",)


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


@register_converter("maskrcnn_")
def convert_mask_rcnn(name: str, state_dict: dict, **model_kwargs) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name, **model_kwargs)` from a torchvision Mask R-CNN
  state dict (`model_kwargs`: the small-model fields of a torchvision model built with matching parts)."""
  check_name(name, TORCHVISION_MODELS)
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  faster_rcnn_parts(variables, weights)
  mask_branch(variables, weights)
  num_classes = int(variables.tree["params"]["box_predictor"]["cls_score"]["bias"].shape[0])
  return finish(name, weights, variables, **{"num_classes": num_classes, **model_kwargs})
