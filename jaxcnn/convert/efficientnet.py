"""torchvision EfficientNet-B0..B7 state dicts -> `jaxcnn.models.efficientnet.EfficientNet` variables.

  features.0.{0,1}                          -> stem/{conv,bn}
  features.<s>.<b>.block.<j>                -> stage<s>_block<b>/<unit>, where the units in order are
      [expand (only with expansion),] depthwise, se (fc1, fc2: 1x1 convs with bias), project
  features.8.{0,1}                          -> head/{conv,bn}
  classifier.1                              -> classifier
The classifier size is taken from `classifier.1.weight`.
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish

TORCHVISION_MODELS = tuple(f"efficientnet_b{i}" for i in range(8))


@register_converter("efficientnet")
def convert_efficientnet(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name)` from a torchvision state dict."""
  check_name(name, TORCHVISION_MODELS)
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  variables.conv_bn(("stem",), weights, "features.0.0", "features.0.1")
  for s in range(1, 8):
    b = 0
    while weights.has(f"features.{s}.{b}.block.0.0.weight"):
      prefix, path = f"features.{s}.{b}.block", (f"stage{s}_block{b}",)
      # Blocks with an expansion conv have four units, the others three.
      units = ["expand"] if weights.has(f"{prefix}.3.0.weight") else []
      units += ["depthwise", "se", "project"]
      for j, unit in enumerate(units):
        if unit == "se":
          variables.put(path + ("se", "fc1"), weights.conv(f"{prefix}.{j}.fc1"))
          variables.put(path + ("se", "fc2"), weights.conv(f"{prefix}.{j}.fc2"))
        else:
          variables.conv_bn(path + (unit,), weights, f"{prefix}.{j}.0", f"{prefix}.{j}.1")
      b += 1
  variables.conv_bn(("head",), weights, "features.8.0", "features.8.1")
  variables.put(("classifier",), weights.dense("classifier.1"))
  num_classes = variables.tree["params"]["classifier"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)
