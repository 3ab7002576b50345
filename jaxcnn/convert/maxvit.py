"""timm `maxvit_*_tf_*` state dicts -> `jaxcnn.models.maxvit.MaxViT` variables.

    torch_to_flax("maxvit_tiny", timm.create_model("maxvit_tiny_tf_224").state_dict())

The flax modules carry timm's names, so the mapping renames module paths:
  stem.conv1 / stem.norm1 / stem.conv2           -> stem_conv1 / stem_norm1 / stem_conv2
  stages.{s}.blocks.{b}.conv.*                   -> stages_{s}_{b}/conv/*  (MBConv)
      conv.shortcut.expand                       -> conv/shortcut_expand
      conv.se.fc1 / fc2 (1x1 convs)              -> conv/se/fc1 / fc2
  stages.{s}.blocks.{b}.attn_{block,grid}.attn.{qkv,proj}
                                                 -> stages_{s}_{b}/attn_{block,grid}/attn/{qkv,proj}
      .attn.rel_pos.relative_position_bias_table -> .../rel_pos/relative_position_bias_table ([heads, 2P-1, 2P-1])
      .mlp.fc1 / fc2                             -> .../fc1 / fc2
  head.norm / head.pre_logits.fc / head.fc       -> head_norm / head_pre_logits / head
and re-lays-out the leaves: conv weights OIHW -> HWIO, Linear weights transposed,
BatchNorm weight/bias -> scale/bias with running statistics in `batch_stats`,
LayerNorm weight -> scale. The window size comes from the relative position
tables (7 for the *_224 weights, 12 for *_384, 16 for *_512), so the input
size is window * the model's total stride; num_classes from `head.fc.weight`.
The result is checked against the model's variable shapes.
"""
import re

from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, finish
from jaxcnn.errors import UserError

_RENAMES = (
    (r"^stem\.(conv1|norm1|conv2)$", r"stem_\1"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages_\1_\2."),
    (r"\.shortcut\.expand$", r".shortcut_expand"),
    (r"\.attn\.rel_pos$", r".rel_pos"),
    (r"\.mlp\.(fc[12])$", r".\1"),
    (r"^head\.norm$", "head_norm"),
    (r"^head\.pre_logits\.fc$", "head_pre_logits"),
    (r"^head\.fc$", "head"),
)


def _flax_path(module: str) -> tuple:
  for pattern, replacement in _RENAMES:
    module = re.sub(pattern, replacement, module)
  return tuple(module.split("."))


def _module_kind(weights: TorchWeights, module: str) -> str:
  if weights.has(f"{module}.running_mean"):
    return "batch_norm"
  if weights.has(f"{module}.relative_position_bias_table"):
    return "rel_pos"
  ndim = weights.state_dict[f"{module}.weight"].ndim
  if ndim == 4:
    return "conv"
  if ndim == 2:
    return "dense"
  return "layer_norm"


@register_converter("maxvit")
def convert_maxvit(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (float32 numpy) for `create_model(name)` from a timm maxvit_*_tf state dict."""
  from jaxcnn.registry import create_model, list_models

  if name not in list_models("maxvit"):
    raise UserError(f"no MaxViT named '{name}' (known: {', '.join(list_models('maxvit'))})")
  if "head.fc.weight" not in state_dict or "stem.conv1.weight" not in state_dict:
    raise UserError("the state dict is not a timm maxvit_*_tf model: no 'stem.conv1.weight' / 'head.fc.weight'")
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  modules = sorted({key.rsplit(".", 1)[0] for key in state_dict if not key.endswith("num_batches_tracked")})
  for module in modules:
    path, kind = _flax_path(module), _module_kind(weights, module)
    if kind == "batch_norm":
      variables.put(path, *weights.batch_norm(module))
    elif kind == "rel_pos":
      variables.put(path, {"relative_position_bias_table": weights.take(f"{module}.relative_position_bias_table")})
    elif kind == "conv":
      variables.put(path, weights.conv(module))
    elif kind == "dense":
      variables.put(path, weights.dense(module))
    else:
      variables.put(path, weights.layer_norm(module))
  tables = [v for k, v in state_dict.items() if k.endswith("relative_position_bias_table")]
  if not tables:
    raise UserError("the state dict has no relative position tables: not a timm maxvit_*_tf model")
  window = (tables[0].shape[-1] + 1) // 2
  num_classes = int(state_dict["head.fc.weight"].shape[0])
  model = create_model(name, num_classes=num_classes)
  input_size = window * model.stem_stride * 2 ** len(model.depths)
  return finish(name, weights, variables, input_size=input_size, num_classes=num_classes)
