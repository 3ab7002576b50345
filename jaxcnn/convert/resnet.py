"""torchvision ResNet / wide ResNet / ResNeXt state dicts -> `jaxcnn.models.resnet.ResNet` variables.

The flax modules carry torchvision's names, so the mapping is mechanical:
  conv1.weight                      -> params/conv1/kernel (OIHW -> HWIO)
  bn1.{weight,bias}                 -> params/bn1/{scale,bias}
  bn1.{running_mean,running_var}    -> batch_stats/bn1/{mean,var}
  layer2.0.conv2.weight             -> params/layer2_0/conv2/kernel
  layer2.0.downsample.{0,1}.*       -> .../layer2_0/downsample_{conv,bn}/...
  fc.{weight,bias}                  -> params/fc/{kernel,bias}
timm's attention ResNets (`seresnet18/50`, and `ResNet(block_args=dict(attn_layer='eca'))`)
add one module per block, also named `se` in both projects:
  layer1.0.se.fc{1,2}.{weight,bias} -> params/layer1_0/se/fc{1,2}/{kernel,bias}   (SE, 1x1 convs)
  layer1.0.se.conv.weight           -> params/layer1_0/se/conv/kernel            (ECA, Conv1d [1,1,k] -> [k,1,1])
The result is checked against the model's own variable shapes, so a state
dict of another architecture fails with a UserError naming what differs.
The classifier size is taken from `fc.weight` (fine-tuned heads work).
"""
import numpy as np

from jaxcnn.convert import batchnorm, conv_kernel, dense_kernel, register_converter
from jaxcnn.errors import UserError
from jaxcnn.registry import create_model
from jaxcnn.utils import abstract_variables

# The ImageNet-layout models that torchvision ships (same names in both projects).
TORCHVISION_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
)
# timm's layout of the same networks with attention blocks (timm seresnet18 / seresnet50, and
# its ResNet with attn_layer='eca'). CBAM is not here: timm's CbamModule has no MLP bias and
# stacks the spatial maps mean-first, the CBAM authors' code (what cbam_resnet50 follows) differs.
TIMM_ATTENTION_MODELS = ("se_resnet18", "se_resnet50", "eca_resnet50")


def _flax_path(torch_module: str) -> tuple:
  """'layer1.0.downsample.1' -> ('layer1_0', 'downsample_bn'); 'bn1' -> ('bn1',)."""
  parts = torch_module.split(".")
  if not parts[0].startswith("layer"):
    return tuple(parts)
  inner = ".".join(parts[2:])
  inner = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(inner, inner)
  return (f"{parts[0]}_{parts[1]}",) + tuple(inner.split("."))


def _put(tree: dict, path: tuple, leaves: dict):
  for key in path:
    tree = tree.setdefault(key, {})
  tree.update(leaves)


def _convert(state_dict: dict) -> dict:
  """Renames and re-lays-out every module of the state dict."""
  params, stats = {}, {}
  modules = sorted({key.rsplit(".", 1)[0] for key in state_dict})
  for module in modules:
    path = _flax_path(module)
    if f"{module}.running_mean" in state_dict:
      bn_params, bn_stats = batchnorm(state_dict, module)
      _put(params, path, bn_params)
      _put(stats, path, bn_stats)
    elif module == "fc":
      _put(params, path, {"kernel": dense_kernel(state_dict["fc.weight"]), "bias": state_dict["fc.bias"]})
    else:
      _put(params, path, _conv(state_dict, module))
  return {"params": params, "batch_stats": stats}


def _conv(state_dict: dict, module: str) -> dict:
  """A Conv2d (OIHW -> HWIO) or ECA's Conv1d over channels ([1, 1, k] -> [k, 1, 1]), bias if any."""
  weight = state_dict[f"{module}.weight"]
  leaves = {"kernel": np.transpose(weight, (2, 1, 0)) if weight.ndim == 3 else conv_kernel(weight)}
  if f"{module}.bias" in state_dict:
    leaves["bias"] = state_dict[f"{module}.bias"]
  return leaves


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[prefix + key] = tuple(value.shape)
  return flat


def _check_fits(name: str, variables: dict, expected: dict):
  """Raises a UserError on the first missing, unexpected or mis-shaped variable."""
  got, want = _flatten(variables), _flatten(expected)
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise UserError(f"the state dict does not fit '{name}': missing {missing[:3]}, unexpected {extra[:3]}")
  for key in sorted(want):
    if got[key] != want[key]:
      raise UserError(f"the state dict does not fit '{name}': {key} has shape {got[key]}, the model needs {want[key]}")


@register_converter("resnet")
@register_converter("wide_resnet")
@register_converter("resnext")
@register_converter("se_resnet")
@register_converter("eca_resnet")
def convert_resnet(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (float32 numpy) for `create_model(name)` from a torchvision / timm state dict."""
  convertible = TORCHVISION_MODELS + TIMM_ATTENTION_MODELS
  if name not in convertible:
    raise UserError(f"no torchvision/timm weights layout for '{name}' (convertible: {', '.join(convertible)})")
  if "fc.weight" not in state_dict:
    raise UserError(f"the state dict has no 'fc.weight': not a torchvision '{name}'")
  try:
    variables = _convert(state_dict)
  except KeyError as e:
    raise UserError(f"the state dict is not a torchvision '{name}': it has no {e}") from e
  model = create_model(name, num_classes=int(state_dict["fc.weight"].shape[0]))
  _check_fits(name, variables, abstract_variables(model, (1, 64, 64, 3)))
  return {col: _as_float32(tree) for col, tree in variables.items()}


def _as_float32(tree):
  if isinstance(tree, dict):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.asarray(tree, dtype=np.float32)
