"""torchvision Faster R-CNN state dicts -> `jaxcnn.models.rcnn.FasterRCNN` variables.

  backbone.body.*   ResNet -> backbone/...  (`jaxcnn.convert.retinanet.resnet_body`)
                    MobileNetV3 features.<i> -> backbone/...  (`jaxcnn.convert.mobilenet`)
  backbone.fpn.*    -> fpn/...  (`jaxcnn.convert.retinanet.fpn`; v2's BatchNorms -> fpn/<block>_i/norm)
  rpn.head.conv.<i>.0                  -> rpn_head/conv_<i>
  rpn.head.{cls_logits, bbox_pred}     -> rpn_head/{cls_logits, bbox_pred}
  roi_heads.box_head.{fc6, fc7}        -> roi_box_head/{fc6, fc7}     (fc6 reads a C x 7 x 7 map: rows reordered)
  roi_heads.box_head.<i>.{0, 1} (v2)   -> roi_box_head/{conv_<i>, bn_<i>}, box_head.<n + 1> (Linear) -> .../fc
  roi_heads.box_predictor.{cls_score, bbox_pred} -> box_predictor/{cls_score, bbox_pred}
`faster_rcnn_parts` writes all of it for a subclass's converter (Mask R-CNN adds its mask branch).
"""
from jaxcnn.convert import register_converter
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights, check_name, finish
from jaxcnn.convert.mobilenet import convert_mobilenet_v3_backbone
from jaxcnn.convert.retinanet import fpn, resnet_body

TORCHVISION_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                      "fasterrcnn_mobilenet_v3_large_320_fpn")


def faster_rcnn_parts(variables: FlaxVariables, weights: TorchWeights):
  """Backbone, FPN, RPN head and box branch of a torchvision FasterRCNN (or MaskRCNN) state dict."""
  if weights.has("backbone.body.conv1.weight"):
    resnet_body(variables, weights)
  else:
    convert_mobilenet_v3_backbone(weights, variables, "backbone.body", ("backbone",))
  fpn(variables, weights)
  i = 0
  while weights.has(f"rpn.head.conv.{i}.0.weight"):
    variables.put(("rpn_head", f"conv_{i}"), weights.conv(f"rpn.head.conv.{i}.0"))
    i += 1
  for leaf in ("cls_logits", "bbox_pred"):
    variables.put(("rpn_head", leaf), weights.conv(f"rpn.head.{leaf}"))
  head = "roi_heads.box_head"
  if weights.has(f"{head}.fc6.weight"):
    channels = weights.state_dict["backbone.fpn.layer_blocks.0.0.weight"].shape[0]
    side = int(round((weights.state_dict[f"{head}.fc6.weight"].shape[1] / channels) ** 0.5))
    variables.put(("roi_box_head", "fc6"), weights.dense(f"{head}.fc6", chw=(channels, side, side)))
    variables.put(("roi_box_head", "fc7"), weights.dense(f"{head}.fc7"))
  else:
    i = 0
    while weights.has(f"{head}.{i}.0.weight"):
      variables.put(("roi_box_head", f"conv_{i}"), weights.conv(f"{head}.{i}.0"))
      variables.put(("roi_box_head", f"bn_{i}"), *weights.batch_norm(f"{head}.{i}.1"))
      i += 1
    channels = weights.state_dict[f"{head}.{i - 1}.0.weight"].shape[0]
    linear = f"{head}.{i + 1}"  # after the Flatten
    side = int(round((weights.state_dict[f"{linear}.weight"].shape[1] / channels) ** 0.5))
    variables.put(("roi_box_head", "fc"), weights.dense(linear, chw=(channels, side, side)))
  for leaf in ("cls_score", "bbox_pred"):
    variables.put(("box_predictor", leaf), weights.dense(f"roi_heads.box_predictor.{leaf}"))


@register_converter("fasterrcnn_")
def convert_faster_rcnn(name: str, state_dict: dict, **model_kwargs) -> dict:
  """{'params', 'batch_stats'} (numpy) for `create_model(name, **model_kwargs)` from a torchvision Faster R-CNN
  state dict (`model_kwargs`: the small-model fields of a torchvision model built with matching parts)."""
  check_name(name, TORCHVISION_MODELS)
  weights, variables = TorchWeights(name, state_dict), FlaxVariables()
  faster_rcnn_parts(variables, weights)
  num_classes = int(variables.tree["params"]["box_predictor"]["cls_score"]["bias"].shape[0])
  return finish(name, weights, variables, **{"num_classes": num_classes, **model_kwargs})
