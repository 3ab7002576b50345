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
