"""torchvision ConvNeXt state dicts -> `jaxcnn.models.convnext.ConvNeXt` variables.

  features.0.{0,1}                         -> stem_conv, stem_norm
  features.<2s-1>.<b>.block.{0,2,3,5}      -> stage<s>_block<b>/{dwconv,norm,pwconv1,pwconv2}
  features.<2s-1>.<b>.layer_scale (C,1,1)  -> stage<s>_block<b>/layer_scale (C,)
  features.<2s-2>.{0,1}                    -> downsample<s>_norm, downsample<s>_conv   (s = 2..4)
  classifier.{0,2}                         -> classifier_norm, classifier
The classifier size is taken from `classifier.2.weight`.
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish

TORCHVISION_MODELS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")


@register_converter("convnext")
def convert_convnext(name: str, state_dict: dict) -> dict:
  """{'params'} (numpy) for `create_model(name)` from a torchvision state dict."""
  check_name(name, TORCHVISION_MODELS)
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  variables.put(("stem_conv",), weights.conv("features.0.0"))
  variables.put(("stem_norm",), weights.layer_norm("features.0.1"))
  for s in range(1, 5):
    if s > 1:
      variables.put((f"downsample{s}_norm",), weights.layer_norm(f"features.{2 * s - 2}.0"))
      variables.put((f"downsample{s}_conv",), weights.conv(f"features.{2 * s - 2}.1"))
    b = 0
    while weights.has(f"features.{2 * s - 1}.{b}.layer_scale"):
      prefix, path = f"features.{2 * s - 1}.{b}", (f"stage{s}_block{b}",)
      variables.put(path + ("dwconv",), weights.conv(f"{prefix}.block.0"))
      variables.put(path + ("norm",), weights.layer_norm(f"{prefix}.block.2"))
      variables.put(path + ("pwconv1",), weights.dense(f"{prefix}.block.3"))
      variables.put(path + ("pwconv2",), weights.dense(f"{prefix}.block.5"))
      variables.put(path, {"layer_scale": weights.take(f"{prefix}.layer_scale").reshape(-1)})
      b += 1
  variables.put(("classifier_norm",), weights.layer_norm("classifier.0"))
  variables.put(("classifier",), weights.dense("classifier.2"))
  num_classes = variables.tree["params"]["classifier"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)
