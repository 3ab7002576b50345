"""Official DETR (facebookresearch/detr) state dicts -> `jaxcnn.models.detr` variables.

  backbone.0.body.*                          -> backbone/...  (the ResNet mapping; FrozenBatchNorm2d's
                                                weight/bias buffers -> params scale/bias, its running
                                                statistics -> batch_stats)
  input_proj                                 -> input_proj (1x1 conv)
  query_embed.weight                         -> query_embed
  transformer.{encoder,decoder}.layers.i.{self_attn,multihead_attn}.in_proj_{weight,bias}
                                             -> transformer/.../layers_i/<attn>/in_proj_{kernel,bias}
      .out_proj / .linear1 / .linear2         -> .../out_proj, linear1, linear2 (Dense, transposed)
      .norm1/2/3, transformer.decoder.norm    -> LayerNorm scale/bias
  class_embed, bbox_embed.layers.{0,1,2}     -> class_embed, bbox_embed/layers_{0,1,2}
The checkpoint fixes num_classes (class_embed rows - 1), num_queries, d_model, dim_feedforward, the layer
counts and the backbone depth (resnet18/34/50/101/152 from its block counts), which are checked against
`create_model(name, **those)`; the number of heads leaves no trace in the weights (keep the model's).
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, finish
from jaxcnn.convert.retinanet import resnet_body
from jaxcnn.errors import UserError

TORCHVISION_MODELS = ("detr_resnet50", "detr_resnet101")
_BACKBONES = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
              ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
              ("bottleneck", (3, 8, 36, 3)): "resnet152"}
BODY = "backbone.0.body"


def _count(weights: TorchWeights, pattern: str) -> int:
  n = 0
  while weights.has(pattern.format(n)):
    n += 1
  return n


def backbone_name(weights: TorchWeights) -> str:
  blocks = tuple(_count(weights, f"{BODY}.layer{s}.{{}}.conv1.weight") for s in range(1, 5))
  kind = "bottleneck" if weights.has(f"{BODY}.layer1.0.conv3.weight") else "basic"
  if (kind, blocks) not in _BACKBONES:
    raise UserError(f"the state dict's backbone ({kind} blocks {blocks} under '{BODY}') is not one of "
                    f"{', '.join(sorted(_BACKBONES.values()))}")
  return _BACKBONES[(kind, blocks)]


def _attention(variables: FlaxVariables, path: tuple, weights: TorchWeights, prefix: str):
  variables.put(path, {"in_proj_kernel": weights.take(f"{prefix}.in_proj_weight").T,
                       "in_proj_bias": weights.take(f"{prefix}.in_proj_bias")})
  variables.put(path + ("out_proj",), weights.dense(f"{prefix}.out_proj"))


def _transformer_layers(variables: FlaxVariables, weights: TorchWeights, part: str) -> int:
  attentions = ("self_attn",) if part == "encoder" else ("self_attn", "multihead_attn")
  norms = ("norm1", "norm2") if part == "encoder" else ("norm1", "norm2", "norm3")
  count = _count(weights, f"transformer.{part}.layers.{{}}.linear1.weight")
  for i in range(count):
    prefix, path = f"transformer.{part}.layers.{i}", ("transformer", part, f"layers_{i}")
    for attention in attentions:
      _attention(variables, path + (attention,), weights, f"{prefix}.{attention}")
    for linear in ("linear1", "linear2"):
      variables.put(path + (linear,), weights.dense(f"{prefix}.{linear}"))
    for norm in norms:
      variables.put(path + (norm,), weights.layer_norm(f"{prefix}.{norm}"))
  return count


@register_converter("detr_")
def convert_detr(name: str, state_dict: dict) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name, ...)` from an official DETR state dict."""
  if name not in TORCHVISION_MODELS:
    raise UserError(f"no official DETR weights layout for '{name}' (convertible: {', '.join(TORCHVISION_MODELS)})")
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  if not weights.has("class_embed.weight"):
    raise UserError(f"the state dict has no 'class_embed.weight': not an official DETR '{name}'")
  resnet_body(variables, weights, prefix=BODY)
  variables.put(("input_proj",), weights.conv("input_proj"))
  variables.tree["params"]["query_embed"] = weights.take("query_embed.weight")
  encoder_layers = _transformer_layers(variables, weights, "encoder")
  decoder_layers = _transformer_layers(variables, weights, "decoder")
  variables.put(("transformer", "decoder", "norm"), weights.layer_norm("transformer.decoder.norm"))
  variables.put(("class_embed",), weights.dense("class_embed"))
  for i in range(3):
    variables.put(("bbox_embed", f"layers_{i}"), weights.dense(f"bbox_embed.layers.{i}"))
  params = variables.tree["params"]
  config = dict(num_classes=int(params["class_embed"]["bias"].shape[0]) - 1,
                num_queries=int(params["query_embed"].shape[0]), d_model=int(params["query_embed"].shape[1]),
                dim_feedforward=int(params["transformer"]["encoder"]["layers_0"]["linear1"]["bias"].shape[0])
                if encoder_layers else 2048,
                num_encoder_layers=encoder_layers, num_decoder_layers=decoder_layers,
                backbone_name=backbone_name(weights), num_heads=1)
  return finish(name, weights, variables, **config)
