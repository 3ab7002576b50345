"""torchvision RetinaNet / FCOS state dicts -> `jaxcnn.models.retinanet` / `jaxcnn.models.fcos` variables.

  backbone.body.*                          -> backbone/...   (the ResNet mapping of `jaxcnn.convert.resnet`)
  backbone.fpn.{inner,layer}_blocks.i.0    -> fpn/{inner,layer}_blocks_i/conv   (.1, a norm -> .../norm)
  backbone.fpn.extra_blocks.p6 / p7        -> fpn/extra_blocks/p6 / p7
  head.{classification,regression}_head.conv.*  (the towers)
      RetinaNet v1: conv.i.0 (conv with bias)               -> head/<h>/conv_i/conv
      RetinaNet v2: conv.i.0 (conv), conv.i.1 (GroupNorm)   -> head/<h>/conv_i/{conv, norm}
      FCOS:         conv.3i (conv with bias), conv.3i+1 (GN) -> head/<h>/conv_i/{conv, norm}
  head.classification_head.cls_logits      -> head/classification_head/cls_logits
  head.regression_head.bbox_reg (bbox_ctrness) -> head/regression_head/bbox_reg (bbox_ctrness)
`num_classes` is read from cls_logits (divided by the anchors per location); the result is checked
against the model's own variable shapes (a UserError names what differs).
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.convert.resnet import _flax_path as resnet_path

TORCHVISION_MODELS = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn")


def resnet_body(variables: FlaxVariables, weights: TorchWeights, prefix: str = "backbone.body"):
  """A torchvision ResNet under `prefix` (IntermediateLayerGetter: no fc) -> backbone/."""
  modules = sorted({key[len(prefix) + 1:].rsplit(".", 1)[0] for key in weights.state_dict
                    if key.startswith(prefix + ".")})
  for module in modules:
    path = ("backbone",) + resnet_path(module)
    if weights.has(f"{prefix}.{module}.running_mean"):
      variables.put(path, *weights.batch_norm(f"{prefix}.{module}"))
    else:
      variables.put(path, weights.conv(f"{prefix}.{module}"))


def _norm(variables: FlaxVariables, path: tuple, weights: TorchWeights, prefix: str):
  """A BatchNorm2d (with running statistics) or GroupNorm at `prefix` -> `path`."""
  if weights.has(f"{prefix}.running_mean"):
    variables.put(path, *weights.batch_norm(prefix))
  else:
    variables.put(path, weights.layer_norm(prefix))


def fpn(variables: FlaxVariables, weights: TorchWeights, prefix: str = "backbone.fpn", path: tuple = ("fpn",)):
  """torchvision's FeaturePyramidNetwork at `prefix` (any norm, any extra block) -> `path`."""
  i = 0
  while weights.has(f"{prefix}.inner_blocks.{i}.0.weight"):
    for kind in ("inner_blocks", "layer_blocks"):
      variables.put(path + (f"{kind}_{i}", "conv"), weights.conv(f"{prefix}.{kind}.{i}.0"))
      if weights.has(f"{prefix}.{kind}.{i}.1.weight"):
        _norm(variables, path + (f"{kind}_{i}", "norm"), weights, f"{prefix}.{kind}.{i}.1")
    i += 1
  for level in ("p6", "p7"):
    if weights.has(f"{prefix}.extra_blocks.{level}.weight"):
      variables.put(path + ("extra_blocks", level), weights.conv(f"{prefix}.extra_blocks.{level}"))


def _tower(variables: FlaxVariables, weights: TorchWeights, head: str, fcos: bool):
  prefix, i = f"head.{head}.conv", 0
  while True:
    if fcos:
      conv, norm = f"{prefix}.{3 * i}", f"{prefix}.{3 * i + 1}"
    else:
      conv, norm = f"{prefix}.{i}.0", f"{prefix}.{i}.1"
    if not weights.has(f"{conv}.weight"):
      return
    variables.put(("head", head, f"conv_{i}", "conv"), weights.conv(conv))
    if weights.has(f"{norm}.weight"):
      variables.put(("head", head, f"conv_{i}", "norm"), weights.layer_norm(norm))
    i += 1


@register_converter("retinanet_")
@register_converter("fcos_")
def convert_detection(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name)` from a torchvision RetinaNet / FCOS state dict."""
  check_name(name, TORCHVISION_MODELS)
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  fcos = name.startswith("fcos")
  resnet_body(variables, weights)
  fpn(variables, weights)
  for head in ("classification_head", "regression_head"):
    _tower(variables, weights, head, fcos)
  variables.put(("head", "classification_head", "cls_logits"), weights.conv("head.classification_head.cls_logits"))
  variables.put(("head", "regression_head", "bbox_reg"), weights.conv("head.regression_head.bbox_reg"))
  if fcos:
    variables.put(("head", "regression_head", "bbox_ctrness"),
                  weights.conv("head.regression_head.bbox_ctrness"))
  head = variables.tree["params"]["head"]
  anchors = head["regression_head"]["bbox_reg"]["bias"].shape[0] // 4
  num_classes = int(head["classification_head"]["cls_logits"]["bias"].shape[0] // anchors)
  return finish(name, weights, variables, num_classes=num_classes)
