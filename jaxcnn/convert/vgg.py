"""torchvision VGG state dicts -> `jaxcnn.models.vgg.VGG` variables.

torchvision numbers the layers of `features` in one sequence: per conv
`Conv2d, ReLU` (or `Conv2d, BatchNorm2d, ReLU`), per block end a `MaxPool2d`.
Walking the model's configuration gives each conv's index:
  features.<n>.*            -> params/block{b}_conv{i}/{kernel,bias}
  features.<n+1>.*  (_bn)   -> params|batch_stats/block{b}_bn{i}/...
  classifier.{0,3,6}.*      -> params/fc{1,2,3}/...
fc1 reads the flattened 512x7x7 map, whose NCHW order is rearranged to NHWC.
The classifier size is taken from `classifier.6.weight`.
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.models.vgg import CONFIGS

TORCHVISION_MODELS = tuple(f"vgg{d}{bn}" for d in CONFIGS for bn in ("", "_bn"))


@register_converter("vgg")
def convert_vgg(name: str, state_dict: dict) -> dict:
  """{'params'[, 'batch_stats']} (numpy) for `create_model(name)` from a torchvision state dict."""
  check_name(name, TORCHVISION_MODELS)
  batch_norm = name.endswith("_bn")
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  index = 0
  for b, num_convs in enumerate(CONFIGS[int(name[3:5])], start=1):
    for i in range(1, num_convs + 1):
      variables.put((f"block{b}_conv{i}",), weights.conv(f"features.{index}"))
      if batch_norm:
        variables.put((f"block{b}_bn{i}",), *weights.batch_norm(f"features.{index + 1}"))
      index += 3 if batch_norm else 2  # conv[, bn], relu
    index += 1  # max-pool
  variables.put(("fc1",), weights.dense("classifier.0", chw=(512, 7, 7)))
  variables.put(("fc2",), weights.dense("classifier.3"))
  variables.put(("fc3",), weights.dense("classifier.6"))
  num_classes = variables.tree["params"]["fc3"]["bias"].shape[0]
  return finish(name, weights, variables, num_classes=num_classes)
