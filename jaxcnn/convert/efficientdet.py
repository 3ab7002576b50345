"""effdet `tf_efficientdet_d0`..`d7` state dicts (ports of the official TF checkpoints) -> `jaxcnn.models.efficientdet`.

    torch_to_flax('efficientdet_d0', sd)  or  torch_to_flax('tf_efficientdet_d0', sd)  -> model 'efficientdet_d0'

  backbone.conv_stem / bn1                      -> backbone/stem/{conv, bn}
  backbone.blocks.<s>.<b>                       -> backbone/stage<s+1>_block<b>/... (timm's EfficientNet names):
      conv_pw, bn1 (with conv_pwl: the expansion) -> expand/{conv, bn}
      conv_dw, bn1 | bn2                        -> depthwise/{conv, bn}
      se.conv_reduce / se.conv_expand           -> se/fc1 / se/fc2
      conv_pwl, bn3 | conv_pw, bn2 (no expansion) -> project/{conv, bn}
  fpn.resample.<l>.conv.{conv, bn}              -> bifpn/resample_<l>/{conv, bn}
  fpn.cell.<r>.fnode.<j>.combine.resample.<i>.conv.{conv, bn} -> bifpn/cell_<r>/node_<j>/resample_<i>/{conv, bn}
  fpn.cell.<r>.fnode.<j>.combine.edge_weights   -> bifpn/cell_<r>/node_<j>/edge_weights
  fpn.cell.<r>.fnode.<j>.after_combine.conv.*   -> bifpn/cell_<r>/node_<j>/conv/{conv_dw, conv_pw, bn}
  {class,box}_net.conv_rep.<r>.*                -> {class,box}_net/conv_rep_<r>/{conv_dw, conv_pw}
  {class,box}_net.bn_rep.<r>.<level>.bn         -> {class,box}_net/bn_rep_<r>_<level>
  {class,box}_net.predict.*                     -> {class,box}_net/predict/{conv_dw, conv_pw}
`num_classes` is read from the class head (outputs / anchors per location, + 1 for the background label);
the result is checked against the model's own variable shapes (a UserError names what differs). effdet's
PyTorch-native `efficientdet_d*` weights (no biases before BatchNorms, symmetric padding) are another
model and do not fit.
"""
import re

from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, finish
from jaxcnn.errors import UserError

MODELS = tuple(f"efficientdet_d{i}" for i in range(8))


def _block(variables: FlaxVariables, weights: TorchWeights, prefix: str, path: tuple):
  """One timm EfficientNet block (DepthwiseSeparable or InvertedResidual) at `prefix`."""
  if weights.has(f"{prefix}.conv_pwl.weight"):
    pairs = (("conv_pw", "bn1", "expand"), ("conv_dw", "bn2", "depthwise"), ("conv_pwl", "bn3", "project"))
  else:
    pairs = (("conv_dw", "bn1", "depthwise"), ("conv_pw", "bn2", "project"))
  for conv, bn, unit in pairs:
    variables.conv_bn(path + (unit,), weights, f"{prefix}.{conv}", f"{prefix}.{bn}")
  variables.put(path + ("se", "fc1"), weights.conv(f"{prefix}.se.conv_reduce"))
  variables.put(path + ("se", "fc2"), weights.conv(f"{prefix}.se.conv_expand"))


def _modules(weights: TorchWeights, prefix: str):
  """Module names (keys without the last field) under `prefix`, sorted."""
  return sorted({key.rsplit(".", 1)[0] for key in weights.state_dict if key.startswith(prefix)})


def _conv_or_bn(variables: FlaxVariables, weights: TorchWeights, module: str, path: tuple):
  if weights.has(f"{module}.running_mean"):
    variables.put(path, *weights.batch_norm(module))
  else:
    variables.put(path, weights.conv(module))


def _fpn(variables: FlaxVariables, weights: TorchWeights):
  rules = (
      (r"fpn\.resample\.(\d+)\.conv\.(conv|bn)$", lambda m: ("bifpn", f"resample_{m[1]}", m[2])),
      (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)$",
       lambda m: ("bifpn", f"cell_{m[1]}", f"node_{m[2]}", f"resample_{m[3]}", m[4])),
      (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.(conv_dw|conv_pw|bn)$",
       lambda m: ("bifpn", f"cell_{m[1]}", f"node_{m[2]}", "conv", m[3])),
      (r"(class_net|box_net)\.conv_rep\.(\d+)\.(conv_dw|conv_pw)$", lambda m: (m[1], f"conv_rep_{m[2]}", m[3])),
      (r"(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn$", lambda m: (m[1], f"bn_rep_{m[2]}_{m[3]}")),
      (r"(class_net|box_net)\.predict\.(conv_dw|conv_pw)$", lambda m: (m[1], "predict", m[2])),
  )
  for module in _modules(weights, "fpn.") + _modules(weights, "class_net.") + _modules(weights, "box_net."):
    match = re.match(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine$", module)
    if match:
      variables.put(("bifpn", f"cell_{match[1]}", f"node_{match[2]}"),
                    {"edge_weights": weights.take(f"{module}.edge_weights")})
      continue
    for pattern, path in rules:
      match = re.match(pattern, module)
      if match:
        _conv_or_bn(variables, weights, module, path(match))
        break
    else:
      raise UserError(f"the state dict does not fit an EfficientDet: unexpected module '{module}'")


@register_converter("efficientdet_")
@register_converter("tf_efficientdet_")
def convert_efficientdet(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model('efficientdet_dN')` from effdet's tf_efficientdet_dN."""
  model = name[len("tf_"):] if name.startswith("tf_") else name
  if model not in MODELS:
    raise UserError(f"no effdet weights layout for '{name}' (convertible: "
                    f"{', '.join(MODELS)}, or their effdet names tf_efficientdet_d0..d7)")
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  variables.conv_bn(("backbone", "stem"), weights, "backbone.conv_stem", "backbone.bn1")
  for module in _modules(weights, "backbone.blocks."):
    match = re.match(r"backbone\.blocks\.(\d+)\.(\d+)\.", module + ".")
    block = f"backbone.blocks.{match[1]}.{match[2]}"
    path = ("backbone", f"stage{int(match[1]) + 1}_block{match[2]}")
    if f"{block}.conv_dw.weight" in weights.used:
      continue
    _block(variables, weights, block, path)
  _fpn(variables, weights)
  if not weights.has("box_net.predict.conv_pw.bias") or not weights.has("class_net.predict.conv_pw.bias"):
    raise UserError(f"the state dict does not fit '{name}': it has no class_net/box_net predict layers")
  anchors = weights.state_dict["box_net.predict.conv_pw.bias"].shape[0] // 4
  num_classes = weights.state_dict["class_net.predict.conv_pw.bias"].shape[0] // anchors + 1
  return finish(model, weights, variables, num_classes=int(num_classes))
