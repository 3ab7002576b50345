"""torchvision GoogLeNet state dicts -> `jaxcnn.models.googlenet.GoogLeNet` variables.

  conv{1,2,3}.{conv,bn}                     -> conv{1,2,3}/{conv,bn}
  inception<x>.branch1                      -> inception<x>/branch1
  inception<x>.branch{2,3}.0 / .1           -> inception<x>/branch{2,3}_reduce / branch{2,3}
  inception<x>.branch4.1                    -> inception<x>/branch4_proj
  aux{1,2}.conv / .fc1 / .fc2               -> aux{1,2}/conv / fc1 / fc2   (when present)
  fc                                        -> fc
aux fc1 reads a flattened 128x4x4 map, whose NCHW order is rearranged to NHWC.
A state dict with auxiliary heads fits `create_model('googlenet', aux_logits=True)`;
the classifier size and the "5x5" branch's kernel (3, torchvision's, or 5) are
read from the tensors. torchvision's ImageNet weights expect
`transform_input=True`.
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.models.googlenet import INCEPTION

BRANCHES = {"branch1": "branch1", "branch2.0": "branch2_reduce", "branch2.1": "branch2",
            "branch3.0": "branch3_reduce", "branch3.1": "branch3", "branch4.1": "branch4_proj"}


@register_converter("googlenet")
def convert_googlenet(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model('googlenet', ...)` from a torchvision state dict."""
  check_name(name, ("googlenet",))
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  for conv in ("conv1", "conv2", "conv3"):
    variables.conv_bn((conv,), weights, f"{conv}.conv", f"{conv}.bn")
  for block in INCEPTION:
    for torch_name, flax_name in BRANCHES.items():
      prefix = f"inception{block}.{torch_name}"
      variables.conv_bn((f"inception{block}", flax_name), weights, f"{prefix}.conv", f"{prefix}.bn")
  aux_logits = weights.has("aux1.fc2.weight")
  if aux_logits:
    for aux in ("aux1", "aux2"):
      variables.conv_bn((aux, "conv"), weights, f"{aux}.conv.conv", f"{aux}.conv.bn")
      variables.put((aux, "fc1"), weights.dense(f"{aux}.fc1", chw=(128, 4, 4)))
      variables.put((aux, "fc2"), weights.dense(f"{aux}.fc2"))
  variables.put(("fc",), weights.dense("fc"))
  params = variables.tree["params"]
  return finish(name, weights, variables, num_classes=params["fc"]["bias"].shape[0], aux_logits=aux_logits,
                branch3_kernel=params["inception3a"]["branch3"]["conv"]["kernel"].shape[0])
