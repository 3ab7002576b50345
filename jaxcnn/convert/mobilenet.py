"""torchvision MobileNetV2 state dicts -> `jaxcnn.models.mobilenet.MobileNetV2` variables.

  features.0.{0,1}                    -> stem/{conv,bn}
  features.<i>.conv.0.{0,1}           -> block<i>/expand/{conv,bn}      (blocks with expansion)
  features.<i>.conv.1.{0,1}           -> block<i>/depthwise/{conv,bn}
  features.<i>.conv.{2,3}             -> block<i>/project/{conv,bn}
  (block 1 has no expansion: conv.0 is its depthwise unit, conv.{1,2} its projection)
  features.18.{0,1}                   -> head/{conv,bn}
  classifier.1                        -> classifier
The classifier size is taken from `classifier.1.weight`. torchvision has no
MobileNet v1.

MobileNetV3 (`mobilenet_v3_large`, `mobilenet_v3_small`):
  features.0.{0,1}                    -> stem/{conv,bn}
  features.<i>.block.<j>              -> block<i>/ expand (where present), depthwise,
                                         se/{fc1,fc2} (where present), project
                                         (conv units as `.<j>.{0,1}`, SE as `.<j>.fc{1,2}`)
  features.<last>.{0,1}               -> last_conv/{conv,bn}
  classifier.{0,3}                    -> classifier/{fc1,fc2}
`convert_mobilenet_v3_backbone` maps the `features` part under any prefix (torchvision's
segmentation models keep it as `backbone.<i>`), for the segmentation converters.

LR-ASPP (`lraspp_mobilenet_v3_large`): `backbone.<i>` as above under `backbone/`, and
  classifier.cbr.{0,1}                -> classifier/cbr/{conv,bn}
  classifier.scale.1                  -> classifier/scale
  classifier.{low,high}_classifier    -> classifier/{low,high}_classifier
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.models.mobilenet import V2_SETTING

NUM_BLOCKS = sum(n for _, _, n, _ in V2_SETTING)


@register_converter("mobilenet_v2")
def convert_mobilenet_v2(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model('mobilenet_v2')` from a torchvision state dict."""
  check_name(name, ("mobilenet_v2",))
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  variables.conv_bn(("stem",), weights, "features.0.0", "features.0.1")
  for i in range(1, NUM_BLOCKS + 1):
    prefix, path = f"features.{i}.conv", (f"block{i}",)
    units = ["depthwise"]
    if weights.has(f"{prefix}.3.running_mean"):  # expansion, depthwise, projection conv, projection BN
      units.insert(0, "expand")
    for j, unit in enumerate(units):
      variables.conv_bn(path + (unit,), weights, f"{prefix}.{j}.0", f"{prefix}.{j}.1")
    j = len(units)
    variables.conv_bn(path + ("project",), weights, f"{prefix}.{j}", f"{prefix}.{j + 1}")
  head = f"features.{NUM_BLOCKS + 1}"
  variables.conv_bn(("head",), weights, f"{head}.0", f"{head}.1")
  variables.put(("classifier",), weights.dense("classifier.1"))
  num_classes = variables.tree["params"]["classifier"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)


def convert_mobilenet_v3_backbone(weights: TorchWeights, variables: FlaxVariables, torch_prefix: str,
                                  path: tuple = ()):
  """Maps torchvision's MobileNetV3 `features` modules at `torch_prefix` (e.g. 'features', 'backbone')
  onto a `MobileNetV3` at `path` (everything but its `classifier`)."""
  variables.conv_bn(path + ("stem",), weights, f"{torch_prefix}.0.0", f"{torch_prefix}.0.1")
  i = 1
  while weights.has(f"{torch_prefix}.{i}.block.0.0.weight"):
    prefix, block = f"{torch_prefix}.{i}.block", path + (f"block{i}",)
    entries, j = [], 0
    while weights.has(f"{prefix}.{j}.0.weight") or weights.has(f"{prefix}.{j}.fc1.weight"):
      entries.append("se" if weights.has(f"{prefix}.{j}.fc1.weight") else "conv")
      j += 1
    units = ["expand", "depthwise", "project"] if entries.count("conv") == 3 else ["depthwise", "project"]
    for j, kind in enumerate(entries):
      if kind == "se":
        variables.put(block + ("se", "fc1"), weights.conv(f"{prefix}.{j}.fc1"))
        variables.put(block + ("se", "fc2"), weights.conv(f"{prefix}.{j}.fc2"))
      else:
        variables.conv_bn(block + (units.pop(0),), weights, f"{prefix}.{j}.0", f"{prefix}.{j}.1")
    i += 1
  variables.conv_bn(path + ("last_conv",), weights, f"{torch_prefix}.{i}.0", f"{torch_prefix}.{i}.1")


@register_converter("mobilenet_v3")
def convert_mobilenet_v3(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model('mobilenet_v3_{large,small}')` from torchvision's."""
  check_name(name, ("mobilenet_v3_large", "mobilenet_v3_small"))
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  convert_mobilenet_v3_backbone(weights, variables, "features")
  variables.put(("classifier", "fc1"), weights.dense("classifier.0"))
  variables.put(("classifier", "fc2"), weights.dense("classifier.3"))
  num_classes = variables.tree["params"]["classifier"]["fc2"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)


@register_converter("lraspp_mobilenet_v3")
def convert_lraspp(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} for `create_model('lraspp_mobilenet_v3_large')` from torchvision's LRASPP."""
  check_name(name, ("lraspp_mobilenet_v3_large",))
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  convert_mobilenet_v3_backbone(weights, variables, "backbone", ("backbone",))
  variables.conv_bn(("classifier", "cbr"), weights, "classifier.cbr.0", "classifier.cbr.1")
  variables.put(("classifier", "scale"), weights.conv("classifier.scale.1"))
  for head in ("low_classifier", "high_classifier"):
    variables.put(("classifier", head), weights.conv(f"classifier.{head}"))
  num_classes = variables.tree["params"]["classifier"]["low_classifier"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)
