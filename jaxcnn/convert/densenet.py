"""torchvision DenseNet state dicts -> `jaxcnn.models.densenet.DenseNet` variables.

The flax modules carry torchvision's names, so the mapping is mechanical:
  features.conv0.weight                          -> params/conv0/kernel
  features.denseblock1.denselayer2.norm1.*       -> .../denseblock1/denselayer2/norm1/...
  features.transition1.conv.weight               -> params/transition1/conv/kernel
  features.norm5.*                               -> params|batch_stats/norm5/...
  classifier.{weight,bias}                       -> params/classifier/{kernel,bias}
Old checkpoints that spell `norm.1` / `conv.2` (torchvision < 0.3) are read
too. `densenet264` has no torchvision weights but the same layout (a
`torchvision.models.densenet.DenseNet(32, (6, 12, 64, 48), 64)` state dict).
"""
import re

from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish

TORCHVISION_LAYOUT = ("densenet121", "densenet161", "densenet169", "densenet201", "densenet264")
_OLD_NAME = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


@register_converter("densenet")
def convert_densenet(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name)` from a torchvision state dict."""
  check_name(name, TORCHVISION_LAYOUT)
  state_dict = {_OLD_NAME.sub(r"\1\2.", key): value for key, value in state_dict.items()}
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  for module in sorted({key.rsplit(".", 1)[0] for key in state_dict}):
    path = tuple(module.split(".")[1:] if module.startswith("features.") else module.split("."))
    if weights.has(f"{module}.running_mean"):
      variables.put(path, *weights.batch_norm(module))
    elif module == "classifier":
      variables.put(path, weights.dense(module))
    else:
      variables.put(path, weights.conv(module))
  num_classes = variables.tree["params"].get("classifier", {}).get("bias")
  return finish(name, weights, variables, num_classes=0 if num_classes is None else num_classes.shape[0])
