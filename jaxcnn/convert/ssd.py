"""torchvision SSD state dicts -> `jaxcnn.models.ssd` variables.

ssd300_vgg16 (torchvision's `SSDFeatureExtractorVGG` under `backbone.`):
  backbone.scale_weight                 -> scale_weight
  backbone.features.<n> (conv1_1..4_3)  -> backbone/block{1..4}_conv{i}  (the VGG converter's numbering)
  backbone.extra.0.{1,3,5}  (conv5_x)   -> backbone/block5_conv{1,2,3}
  backbone.extra.0.7.{1,3}              -> fc6, fc7
  backbone.extra.<i>.{0,2}  (i = 1..4)  -> extra<i>/{conv1,conv2}
  head.{classification,regression}_head.module_list.<k> -> {classification,regression}_head/level<k>

ssdlite320_mobilenet_v3_large (`SSDLiteFeatureExtractorMobileNet`): torchvision
splits MobileNetV3's `features` at the expansion of block c4 (the block opening
the last stage): `backbone.features.0` holds features 0..c4-1 and that block's
expansion unit, `backbone.features.1` the rest of the block (`.0.<j>`) and the
later features. These keys are put back in the classification layout
(`features.<i>.block.<j>`) and go through `jaxcnn.convert.mobilenet`'s backbone
mapping into `backbone/`. Then
  backbone.extra.<i>.{0,1,2}.{0,1}      -> extra<i+1>/{reduce,depthwise,expand}/{conv,bn}
  head.*_head.module_list.<k>.0.{0,1}   -> *_head/level<k>/depthwise/{conv,bn}
  head.*_head.module_list.<k>.1         -> *_head/level<k>/pointwise
`num_classes`, `reduced_tail` (from the last stage's width) and
`num_extra_blocks` are read from the state dict; the result is checked against
the model's own variable shapes.
"""
import re

from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.convert.mobilenet import convert_mobilenet_v3_backbone
from jaxcnn.models.vgg import CONFIGS

TORCHVISION_MODELS = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")


def _heads(variables: FlaxVariables, weights: TorchWeights, lite: bool) -> int:
  """Maps both heads; returns the number of levels."""
  level = 0
  while weights.has(f"head.regression_head.module_list.{level}.{'1.' if lite else ''}weight"):
    for head in ("classification_head", "regression_head"):
      prefix, path = f"head.{head}.module_list.{level}", (head, f"level{level}")
      if lite:
        variables.conv_bn(path + ("depthwise",), weights, f"{prefix}.0.0", f"{prefix}.0.1")
        variables.put(path + ("pointwise",), weights.conv(f"{prefix}.1"))
      else:
        variables.put(path, weights.conv(prefix))
    level += 1
  return level


def _num_classes(variables: FlaxVariables, anchors_first_level: int, lite: bool) -> int:
  head = variables.tree["params"]["classification_head"]["level0"]
  bias = head["pointwise"]["bias"] if lite else head["bias"]
  return int(bias.shape[0]) // anchors_first_level


def _convert_ssd300(weights: TorchWeights, variables: FlaxVariables):
  variables.put((), {"scale_weight": weights.take("backbone.scale_weight")})
  index = 0
  for b, num_convs in enumerate(CONFIGS[16][:4], start=1):
    for i in range(1, num_convs + 1):
      variables.put(("backbone", f"block{b}_conv{i}"), weights.conv(f"backbone.features.{index}"))
      index += 2  # conv, relu
    index += 1  # max-pool
  for i, n in enumerate((1, 3, 5), start=1):  # extra.0.0 is pool 4
    variables.put(("backbone", f"block5_conv{i}"), weights.conv(f"backbone.extra.0.{n}"))
  variables.put(("fc6",), weights.conv("backbone.extra.0.7.1"))
  variables.put(("fc7",), weights.conv("backbone.extra.0.7.3"))
  for i in range(1, 5):
    variables.put((f"extra{i}", "conv1"), weights.conv(f"backbone.extra.{i}.0"))
    variables.put((f"extra{i}", "conv2"), weights.conv(f"backbone.extra.{i}.2"))
  _heads(variables, weights, lite=False)
  return {"num_classes": _num_classes(variables, 4, lite=False)}


def _classification_layout(state_dict: dict) -> dict:
  """SSDLite's split backbone keys -> MobileNetV3 `features.<i>...` keys (other keys unchanged)."""
  head = re.compile(r"backbone\.features\.0\.(\d+)\.")
  c4 = max((int(m.group(1)) for k in state_dict for m in [head.match(k)] if m), default=-1)
  out = {}
  for key, value in state_dict.items():
    m = re.match(r"backbone\.features\.(0|1)\.(\d+)\.(.*)", key)
    if m is None:
      out[key] = value
      continue
    part, i, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if part == 0:
      out[f"features.{i}.block.0.{rest}" if i == c4 else f"features.{i}.{rest}"] = value
    elif i == 0:
      out[f"features.{c4}.block.{rest}"] = value
    else:
      out[f"features.{c4 + i}.{rest}"] = value
  return out


def _convert_ssdlite(weights: TorchWeights, variables: FlaxVariables):
  convert_mobilenet_v3_backbone(weights, variables, "features", ("backbone",))
  num_extra = 0
  while weights.has(f"backbone.extra.{num_extra}.0.0.weight"):
    for j, unit in enumerate(("reduce", "depthwise", "expand")):
      prefix = f"backbone.extra.{num_extra}.{j}"
      variables.conv_bn((f"extra{num_extra + 1}", unit), weights, f"{prefix}.0", f"{prefix}.1")
    num_extra += 1
  _heads(variables, weights, lite=True)
  last_stage = variables.tree["params"]["backbone"]["block15"]["project"]["conv"]["kernel"].shape[-1]
  return {"num_classes": _num_classes(variables, 6, lite=True), "reduced_tail": last_stage < 160,
          "num_extra_blocks": num_extra}


@register_converter("ssd")
def convert_ssd(name: str, state_dict: dict) -> dict:
  """{'params'[, 'batch_stats']} (numpy) for `create_model(name)` from a torchvision SSD / SSDLite state dict."""
  check_name(name, TORCHVISION_MODELS)
  if name == "ssd300_vgg16":
    weights, variables = TorchWeights(name, state_dict), FlaxVariables()
    kwargs = _convert_ssd300(weights, variables)
    return finish(name, weights, variables, input_size=300, **kwargs)
  weights, variables = TorchWeights(name, _classification_layout(state_dict)), FlaxVariables()
  kwargs = _convert_ssdlite(weights, variables)
  return finish(name, weights, variables, **kwargs)
