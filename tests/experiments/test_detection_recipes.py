"""The two-stage and DETR experiments (issue 15): the models they build, counted against torchvision and the
official DETR, and the GPU recipes' schedules and frozen parameters against their sources (no compute:
jax.eval_shape)."""
import re

import jax
import jax.numpy as jnp
import pytest
import torch
from flax import traverse_util
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from experiments.configs import get_experiment
from jaxcnn import data as data_lib
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import model_kwargs
from jaxcnn.train.optim import make_schedule
from jaxcnn.utils import abstract_variables, param_count

DIGITS_CLASSES = 10
RECIPES = {  # experiment: (dataset classes, images per epoch, epochs, lr-drop epochs, base lr, batch)
    "fasterrcnn_resnet50_coco": (80, 117_266, 26, (16, 22), 0.02, 16),
    "maskrcnn_resnet50_coco": (80, 117_266, 26, (16, 22), 0.02, 16),
    "fasterrcnn_resnet50_voc": (20, 16_551, 12, (9,), 0.01, 16),
    "detr_resnet50_coco": (80, 118_287, 500, (400,), 1e-4, 64),
}
# Parameters a recipe trains: torchvision's fasterrcnn_resnet50_fpn with pretrained-backbone settings
# (FrozenBatchNorm2d, trainable_backbone_layers=3; requires_grad), built below; the official DETR's printed
# 'number of params' 41,302,368 (92 logits, layer2-4 trained) less 10 x 257 for 82 logits.
DETR_R50_TRAINED_82_LOGITS = 41_302_368 - 10 * 257


def experiment_model(name, num_classes):
  config, _ = get_experiment(name)
  return config, create_model(config.model.name, **model_kwargs(config.model, config.train,
                                                              num_classes=num_classes + 1))


def flat_params(model, size, channels):
  return traverse_util.flatten_dict(abstract_variables(model, (1, size, size, channels))["params"], sep="/")


def torch_count(module, trainable_only=False):
  return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_fasterrcnn_digits_counts_as_torchvisions_model_with_its_knobs():
  config, model = experiment_model("fasterrcnn_digits", DIGITS_CLASSES)
  assert config.data.name == "digits_det" and config.model.backbone_name == "resnet18"
  trunk = resnet18()
  trunk.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)   # grayscale canvases
  layers = config.model.returned_layers
  backbone = BackboneWithFPN(trunk, {f"layer{i}": str(n) for n, i in enumerate(layers)},
                             [64 * 2 ** (i - 1) for i in layers], config.model.fpn_channels,
                             extra_blocks=LastLevelMaxPool())
  sizes = config.model.anchor_sizes
  reference = FasterRCNN(
      backbone, num_classes=None,
      rpn_anchor_generator=AnchorGenerator(sizes, (config.model.aspect_ratios,) * len(sizes)),
      box_head=TwoMLPHead(config.model.fpn_channels * 7 * 7, config.model.representation_size),
      box_predictor=FastRCNNPredictor(config.model.representation_size, DIGITS_CLASSES + 1))
  params = flat_params(model, 64, 1)
  # torchvision's IntermediateLayerGetter drops the stages after the last returned one; the jaxcnn backbone
  # keeps them (unused: no gradient reaches them), so they are left out of the comparison.
  unused = [k for k in params if any(k.startswith(f"backbone/layer{i}_") for i in range(max(layers) + 1, 5))]
  assert sum(params[k].size for k in params if k not in unused) == torch_count(reference) == 3_837_387
  assert sum(params[k].size for k in params) == 12_231_115


def test_detr_digits_model_and_its_token_grid():
  config, model = experiment_model("detr_digits", DIGITS_CLASSES)
  size = config.data.image_size
  variables = abstract_variables(model, (1, size, size, 1))
  # resnet18's stem, layer1 and layer2 (backbone_stage='stage2': 676,800 at one input channel) + input_proj
  # (128 -> 128) + queries + 3 encoder and 3 decoder layers (d_model 128, FFN 512) + decoder norm +
  # class_embed (12 logits) + the 3-layer box MLP
  assert config.model.backbone_stage == "stage2"
  backbone = sum(x.size for x in jax.tree.leaves(variables["params"]["backbone"]))
  assert backbone == 676_800 and param_count(variables["params"]) == 2_119_248
  assert config.model.aux_loss and 10 <= config.model.num_queries <= 20
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
      variables, jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
  tokens = state["intermediates"]["input_proj"]["__call__"][0]
  assert tokens.shape == (1, size // 8, size // 8, config.model.d_model)   # stride 8: layer2's output
  assert size // 8 >= 8


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_schedule_follows_its_source(name):
  config, doc = get_experiment(name)
  _, images, epochs, drops, lr, batch = RECIPES[name]
  assert "Target:" in doc and config.optim.lr == lr and config.train.batch_size == batch
  steps_per_epoch = -(-images // batch)
  assert config.train.steps == epochs * steps_per_epoch
  schedule = make_schedule(config.optim, config.train.steps)
  warmup = config.optim.warmup_steps
  rates = [lr] + [lr * 0.1 ** (n + 1) for n in range(len(drops))]
  edges = [0] + [e * steps_per_epoch for e in drops] + [config.train.steps]
  for rate, start, end in zip(rates, edges[:-1], edges[1:]):
    # the rate drops within the warmup's length of each epoch boundary (the boundaries count after warmup)
    for step in (start + 2 * warmup + 1, end - warmup - 1):
      assert float(schedule(step)) == pytest.approx(rate, rel=1e-5), (name, step)


def torchvision_trained_count(num_classes, detector=FasterRCNN):
  backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
  return torch_count(detector(backbone, num_classes=num_classes + 1), trainable_only=True)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_the_sources_parameters(name):
  config, model = experiment_model(name, RECIPES[name][0])
  assert config.model.frozen_bn and config.finetune.into == "backbone"
  assert config.finetune.converter_name == "resnet50"
  params = flat_params(model, 64, 3)
  frozen = {k for k in params if re.search(config.finetune.freeze, k)}
  assert all(k.startswith("backbone/") for k in frozen)
  assert {"backbone/conv1/kernel", "backbone/layer1_0/conv1/kernel", "backbone/layer4_2/bn3/scale"} <= frozen
  assert "backbone/layer2_0/conv1/kernel" not in frozen
  trained = sum(params[k].size for k in params if k not in frozen)
  if name.startswith("detr"):
    assert trained == DETR_R50_TRAINED_82_LOGITS
  else:
    detector = MaskRCNN if name.startswith("maskrcnn") else FasterRCNN
    assert trained == torchvision_trained_count(RECIPES[name][0], detector)


def test_maskrcnn_recipe_reads_coco_masks_and_states_both_targets():
  config, doc = get_experiment("maskrcnn_resnet50_coco")
  faster, _ = get_experiment("fasterrcnn_resnet50_coco")
  assert config.data.name == "coco2017_inst" and config.model.name == "maskrcnn_resnet50_fpn"
  assert "box_masks" in {k for k, v in data_lib.dataset_info(config.data.name).fields if v == "box_mask"}
  assert "37.9" in doc and "34.6" in doc and "Not measured here" in doc
  for section in ("data", "optim", "train", "finetune"):   # the same recipe but for the model and the masks
    want = faster[section].to_dict()
    got = config[section].to_dict()
    if section == "data":
      want.pop("name"), got.pop("name")
    assert got == want, section
