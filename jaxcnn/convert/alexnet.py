"""torchvision AlexNet state dicts -> `jaxcnn.models.alexnet.AlexNet` variables.

  features.{0,3,6,8,10}.*   -> params/conv{1..5}/{kernel,bias}
  classifier.{1,4,6}.*      -> params/fc{1,2,3}/{kernel,bias}
fc1 reads the flattened 256x6x6 map, whose NCHW order is rearranged to NHWC.
The classifier size is taken from `classifier.6.weight` (fine-tuned heads work).
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish

CONV_INDICES = (0, 3, 6, 8, 10)


@register_converter("alexnet")
def convert_alexnet(name: str, state_dict: dict) -> dict:
  """{'params'} (numpy) for `create_model('alexnet')` from a torchvision state dict."""
  check_name(name, ("alexnet",))
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  for i, index in enumerate(CONV_INDICES, start=1):
    variables.put((f"conv{i}",), weights.conv(f"features.{index}"))
  variables.put(("fc1",), weights.dense("classifier.1", chw=(256, 6, 6)))
  variables.put(("fc2",), weights.dense("classifier.4"))
  variables.put(("fc3",), weights.dense("classifier.6"))
  num_classes = variables.tree["params"]["fc3"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)
