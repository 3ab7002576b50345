"""torchvision segmentation state dicts -> `jaxcnn.models.fcn` / `jaxcnn.models.deeplab` variables.

The backbone keeps its classification layout under `backbone.` (torchvision's
IntermediateLayerGetter drops only `fc`; for MobileNetV3 `backbone.<i>` are
its `features.<i>`), so it goes through the ResNet / MobileNetV3 mapping
(`jaxcnn.convert.resnet`, `jaxcnn.convert.mobilenet`) into `backbone/`. The heads:
  {aux_}classifier.{0,1,4}.*  (FCNHead)        -> {aux_}classifier/{head/conv, head/bn, logits}
  classifier.0.convs.0.{0,1}  (ASPP 1x1)       -> classifier/aspp/branch0/{conv, bn}
  classifier.0.convs.{1,2,3}.{0,1} (atrous)    -> classifier/aspp/branch{1,2,3}/{conv, bn}
  classifier.0.convs.4.{1,2}  (image pooling)  -> classifier/aspp/pooling/{conv, bn}
  classifier.0.project.{0,1}                   -> classifier/aspp/project/{conv, bn}
  classifier.{1,2}, classifier.4 (DeepLabHead) -> classifier/head/{conv, bn}, classifier/logits
`num_classes` is read from the logits bias, `aux_loss` from whether
`aux_classifier.*` is there; the result is checked against the model's own
variable shapes (a UserError names what differs).
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.convert.mobilenet import convert_mobilenet_v3_backbone
from jaxcnn.convert.resnet import _flax_path as resnet_path

TORCHVISION_MODELS = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                      "deeplabv3_mobilenet_v3_large")


def _conv_bn(variables: FlaxVariables, path: tuple, weights: TorchWeights, conv: str, bn: str):
  variables.put(path + ("conv",), weights.conv(conv))
  variables.put(path + ("bn",), *weights.batch_norm(bn))


def fcn_head(variables: FlaxVariables, weights: TorchWeights, prefix: str):
  _conv_bn(variables, (prefix, "head"), weights, f"{prefix}.0", f"{prefix}.1")
  variables.put((prefix, "logits"), weights.conv(f"{prefix}.4"))


def aspp(variables: FlaxVariables, weights: TorchWeights, prefix: str, path: tuple):
  """torchvision's `ASPP` module at `prefix` -> `jaxcnn.layers.aspp.ASPP` at `path`."""
  for i in range(4):
    _conv_bn(variables, path + (f"branch{i}",), weights, f"{prefix}.convs.{i}.0", f"{prefix}.convs.{i}.1")
  _conv_bn(variables, path + ("pooling",), weights, f"{prefix}.convs.4.1", f"{prefix}.convs.4.2")
  _conv_bn(variables, path + ("project",), weights, f"{prefix}.project.0", f"{prefix}.project.1")


def deeplab_head(variables: FlaxVariables, weights: TorchWeights, prefix: str = "classifier"):
  """torchvision's `DeepLabHead` at `prefix` -> `jaxcnn.layers.aspp.DeepLabHead` at (prefix,)."""
  aspp(variables, weights, f"{prefix}.0", (prefix, "aspp"))
  _conv_bn(variables, (prefix, "head"), weights, f"{prefix}.1", f"{prefix}.2")
  variables.put((prefix, "logits"), weights.conv(f"{prefix}.4"))


def _resnet_backbone(variables: FlaxVariables, weights: TorchWeights):
  modules = sorted({key[len("backbone."):].rsplit(".", 1)[0]
                    for key in weights.state_dict if key.startswith("backbone.")})
  for module in modules:
    path = ("backbone",) + resnet_path(module)
    if weights.has(f"backbone.{module}.running_mean"):
      variables.put(path, *weights.batch_norm(f"backbone.{module}"))
    else:
      variables.put(path, weights.conv(f"backbone.{module}"))


@register_converter("fcn_resnet")
@register_converter("deeplabv3_resnet")
@register_converter("deeplabv3_mobilenet")
def convert_segmentation(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name)` from a torchvision segmentation state dict."""
  check_name(name, TORCHVISION_MODELS)
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  if "mobilenet_v3" in name:
    convert_mobilenet_v3_backbone(weights, variables, "backbone", ("backbone",))
  else:
    _resnet_backbone(variables, weights)
  if name.startswith("fcn"):
    fcn_head(variables, weights, "classifier")
  else:
    deeplab_head(variables, weights)
  aux_loss = weights.has("aux_classifier.4.bias")
  if aux_loss:
    fcn_head(variables, weights, "aux_classifier")
  num_classes = int(variables.tree["params"]["classifier"]["logits"]["bias"].shape[0])
  return finish(name, weights, variables, num_classes=num_classes, aux_loss=aux_loss)
