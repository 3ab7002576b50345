"""SSD300-VGG16 and SSDLite320-MobileNetV3 against torchvision (random weights, randomised BN statistics).

Raw head outputs (eval), post-processed detections (torchvision's whole model, its
transform made the identity), the training loss (torchvision's train-mode loss dict
on the same batch, one image without boxes) and its batch normaliser across devices.
SSDLite's BN running statistics are those of a random batch (randomised statistics
saturate its ReLU6 maps, so every location gives the same scores and the order of
the detections hangs on the last bits); SSD300's class and box convolutions are
scaled up so its softmax scores spread out (at torchvision's initial scale all 91
scores sit near 1/91).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402
from torchvision_parity import randomize_constants_  # noqa: E402

LITE, VGG = "ssdlite320_mobilenet_v3_large", "ssd300_vgg16"


def _torchvision_ssd(name, height, width):
  torch.manual_seed(0)
  model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
  randomize_constants_(model)
  model.transform = GeneralizedRCNNTransform(min(height, width), max(height, width), [0.0] * 3, [1.0] * 3,
                                             size_divisible=1, fixed_size=(width, height))
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    if norms:
      for m in norms:
        m.momentum = 1.0  # running statistics := those of the next batch
      model.train()
      model.head(list(model.backbone(torch.from_numpy(_images(2, height, width, seed=9))).values()))
      for m in norms:
        m.momentum = 0.03
    else:
      for head, gain in ((model.head.classification_head, 10.0), (model.head.regression_head, 2.5)):
        for conv in head.module_list:
          conv.weight.mul_(gain)
  return model.eval()


def _images(batch, height, width, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 3, height, width)).astype(np.float32)


def _targets(height, width, seed=0):
  """Three images: 3 boxes, none, 1 box; padded to 4 slots."""
  rng = np.random.default_rng(seed)
  counts, slots = (3, 0, 1), 4
  boxes = np.zeros((len(counts), slots, 4), np.float32)
  labels = np.zeros((len(counts), slots), np.int32)
  valid = np.zeros((len(counts), slots), bool)
  for i, n in enumerate(counts):
    size = rng.uniform(0.15, 0.6, size=(n, 2)) * [width, height]
    x1y1 = rng.uniform(0, 1, size=(n, 2)) * ([width, height] - size)
    boxes[i, :n] = np.concatenate([x1y1, x1y1 + size], 1)
    labels[i, :n] = rng.integers(1, 91, size=n)
    valid[i, :n] = True
  return {"boxes": boxes, "labels": labels, "valid": valid}


def _torch_targets(targets):
  return [{"boxes": torch.from_numpy(b[v]), "labels": torch.from_numpy(lab[v]).long()}
          for b, lab, v in zip(targets["boxes"], targets["labels"], targets["valid"])]


def test_parameter_counts_and_backbone_trees():
  for name, size, count, zoo in ((VGG, 300, 35_641_826, create_model("vgg16")),
                                 (LITE, 320, 3_440_060, create_model("mobilenet_v3_large", reduced_tail=True))):
    model = create_model(name)
    variables = abstract_variables(model, (1, size, size, 3))
    assert param_count(variables["params"]) == count
    assert model.anchors((size, size)).shape == ((8732, 4) if name == VGG else (3234, 4))
    classifier = abstract_variables(zoo, (1, 64, 64, 3))
    head = {"fc1", "fc2", "fc3", "classifier"}
    for collection, tree in classifier.items():
      expected = {k: v for k, v in tree.items() if k not in head}
      got = variables[collection]["backbone"]
      assert jax.tree.map(lambda a: a.shape, got) == jax.tree.map(lambda a: a.shape, expected)


def _check_detections(name, height, width):
  reference = _torchvision_ssd(name, height, width)
  images = _images(2, height, width)
  with torch.no_grad():
    transformed, _ = reference.transform(list(torch.from_numpy(images)))
    np.testing.assert_array_equal(transformed.tensors.numpy(), images)  # the transform really is the identity
    features = list(reference.backbone(transformed.tensors).values())
    head = reference.head(features)
    detections = reference(list(torch.from_numpy(images)))
  model = create_model(name)
  variables = torch_to_flax(name, reference.state_dict())
  outputs = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1))
  for key in ("cls_logits", "bbox_regression"):
    expected = head[key].numpy()
    assert outputs[key].shape == expected.shape
    diff, scale = float(np.max(np.abs(np.asarray(outputs[key]) - expected))), float(np.max(np.abs(expected)))
    print(f"{name} {key}: max |jax - torch| = {diff:.2e} (max |output| {scale:.2f})")
    assert scale > 1.0 and diff < 1e-4
  got = jax.jit(functools.partial(model.postprocess, image_size=(height, width)))(outputs)
  assert got["boxes"].shape == (2, model.detections_per_img, 4)
  for i, want in enumerate(detections):
    n = len(want["scores"])
    assert 5 < n and int(got["valid"][i].sum()) == n and not got["valid"][i, n:].any()
    boxes, scores, labels = (np.asarray(got[k][i, :n]) for k in ("boxes", "scores", "labels"))
    # Detection r of torchvision must be ours at rank r, or within 2 ranks where two scores are closer
    # than the implementations' rounding (the logits agree to ~1e-5 relative; BN divides by small
    # deviations): such near-ties occur among a few hundred detections.
    free, box_diff, swaps = np.ones(n, bool), 0.0, 0
    for r in range(n):
      near = [j for j in range(max(0, r - 2), min(n, r + 3)) if free[j] and labels[j] == int(want["labels"][r])
              and abs(scores[j] - float(want["scores"][r])) < 5e-5
              and np.abs(boxes[j] - want["boxes"][r].numpy()).max() < 1e-3]
      assert near, f"image {i}: torchvision's detection {r} has no counterpart"
      j = r if r in near else near[0]
      free[j], swaps = False, swaps + (j != r)
      box_diff = max(box_diff, float(np.abs(boxes[j] - want["boxes"][r].numpy()).max()))
      if j != r:
        assert abs(float(want["scores"][r]) - float(want["scores"][j])) < 1e-4  # a near-tie, not a wrong order
    print(f"{name} image {i}: {n} detections, max box diff {box_diff:.1e}, {swaps} near-tie swaps")


def test_ssdlite_outputs_and_detections_match_torchvision():
  _check_detections(LITE, 96, 128)


@pytest.mark.slow
def test_ssd300_outputs_and_detections_match_torchvision():
  _check_detections(VGG, 300, 300)


def test_ssdlite_training_loss_matches_torchvision():
  """torchvision's train-mode forward (batch BN statistics) and loss dict = apply(train=True) + detection_loss."""
  height, width = 96, 128
  reference = _torchvision_ssd(LITE, height, width).train()
  images, targets = _images(3, height, width, seed=1), _targets(height, width)
  model = create_model(LITE)
  variables = torch_to_flax(LITE, reference.state_dict())
  with torch.no_grad():
    expected = reference(list(torch.from_numpy(images)), _torch_targets(targets))

  @jax.jit
  def loss_fn(variables, images, targets):
    outputs, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return model.detection_loss(outputs, targets, (height, width))

  loss, metrics = loss_fn(variables, images.transpose(0, 2, 3, 1), targets)
  for key, value in expected.items():
    print(f"{key}: jax {float(metrics['train/' + key]):.6f} torch {float(value):.6f}")
    np.testing.assert_allclose(float(metrics["train/" + key]), float(value), rtol=1e-4)
  np.testing.assert_allclose(float(loss), float(sum(expected.values())), rtol=1e-4)


def _compute_loss_reference(reference, head, anchors, targets):
  """torchvision's train branch after the head: SSDMatcher (all -1 without boxes), then compute_loss."""
  torch_targets, matched = _torch_targets(targets), []
  for target in torch_targets:
    if target["boxes"].numel() == 0:
      matched.append(torch.full((anchors.shape[0],), -1, dtype=torch.int64))
    else:
      matched.append(reference.proposal_matcher(torchvision.ops.box_iou(target["boxes"], anchors)))
  return reference.compute_loss(torch_targets, head, [anchors] * len(torch_targets), matched)


@pytest.mark.parametrize("name", [LITE, pytest.param(VGG, marks=pytest.mark.slow)])
def test_loss_on_given_outputs_gradients_and_device_normaliser(name):
  """detection_loss on random head outputs = torchvision's compute_loss with its own anchors; finite
  gradients with an empty image; per-device losses with psum'd positives add up to the global loss."""
  height, width = (96, 128) if name == LITE else (300, 300)
  model = create_model(name)
  anchors = np.array(model.anchors((height, width)))
  reference = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None).eval()
  with torch.no_grad():
    reference.transform = GeneralizedRCNNTransform(height, width, [0.0] * 3, [1.0] * 3, size_divisible=1,
                                                   fixed_size=(width, height))
    images = reference.transform(list(torch.zeros(1, 3, height, width)))[0]
    features = list(reference.backbone(images.tensors).values())
    torch_anchors = reference.anchor_generator(images, features)[0].numpy()
  np.testing.assert_allclose(anchors, torch_anchors, atol=1e-4)
  rng = np.random.default_rng(2)
  targets = _targets(height, width, seed=3)
  outputs = {"cls_logits": rng.normal(size=(3, len(anchors), 91)).astype(np.float32) * 3,
             "bbox_regression": rng.normal(size=(3, len(anchors), 4)).astype(np.float32)}
  with torch.no_grad():
    expected = _compute_loss_reference(reference, {k: torch.from_numpy(v) for k, v in outputs.items()},
                                       torch.from_numpy(anchors), targets)
  loss_fn = jax.jit(functools.partial(model.detection_loss, image_size=(height, width)))
  loss, metrics = loss_fn(outputs, targets)
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics["train/" + key]), float(value), rtol=1e-4)
  grads = jax.grad(lambda o: loss_fn(o, targets)[0])(outputs)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  # torchvision mines 3 negatives per positive of the same image: an image without boxes adds nothing
  assert float(jnp.abs(grads["cls_logits"][0]).sum()) > 0 and float(jnp.abs(grads["bbox_regression"][0]).sum()) > 0
  assert float(jnp.abs(grads["cls_logits"][1]).sum()) == float(jnp.abs(grads["bbox_regression"][1]).sum()) == 0

  # two "devices" of 2 images (one with 1 image padded by an all-invalid one)
  shard = lambda tree: jax.tree.map(lambda a: np.concatenate([a, np.zeros_like(a[:1])]).reshape(2, 2, *a.shape[1:]),
                                    tree)
  per_device = jax.vmap(functools.partial(model.detection_loss, image_size=(height, width), axis_name="d"),
                        axis_name="d")(shard(outputs), shard(targets))
  zero_logits = {"cls_logits": np.zeros_like(outputs["cls_logits"][:1]),
                 "bbox_regression": np.zeros_like(outputs["bbox_regression"][:1])}
  padded_loss, _ = loss_fn(jax.tree.map(lambda a, z: np.concatenate([a, z]), outputs, zero_logits),
                           jax.tree.map(lambda a: np.concatenate([a, np.zeros_like(a[:1])]), targets))
  np.testing.assert_allclose(float(per_device[0].sum()), float(padded_loss), rtol=1e-5)
  print(f"{name}: loss {float(loss):.5f}, torch {float(sum(expected.values())):.5f}")


def test_wrong_inputs_and_layouts():
  with pytest.raises(UserError, match="at least 268x268"):
    abstract_variables(create_model(VGG), (1, 128, 128, 3))
  with pytest.raises(UserError, match="num_extra_blocks=5"):
    create_model(LITE, num_extra_blocks=5)
  with pytest.raises(UserError, match="num_classes=1"):
    create_model(LITE, num_classes=1)
  with pytest.raises(UserError, match="no torchvision weights layout for 'ssd512_vgg16'"):
    torch_to_flax("ssd512_vgg16", {})
  state = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=5).state_dict()
  variables = torch_to_flax(LITE, state)
  assert variables["params"]["classification_head"]["level0"]["pointwise"]["bias"].shape == (6 * 5,)
  with pytest.raises(UserError, match=f"does not fit '{VGG}'"):
    torch_to_flax(VGG, state)


def test_small_ssdlite_knobs():
  """The offline-run knobs: a narrower backbone, fewer maps, other anchor scales; 64x64 inputs work."""
  model = create_model(LITE, num_classes=11, width_mult=0.5, extra_width_mult=0.25, num_extra_blocks=1,
                       min_ratio=0.15, max_ratio=0.6)
  x = jnp.zeros((2, 64, 64, 3))
  variables = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), abstract_variables(model, x.shape))
  outputs = jax.jit(model.apply)(variables, x)
  anchors = model.anchors((64, 64))
  assert anchors.shape == ((16 + 4 + 1) * 6, 4) == outputs["bbox_regression"].shape[1:]
  assert outputs["cls_logits"].shape == (2, anchors.shape[0], 11)
  assert variables["params"]["extra1"]["expand"]["conv"]["kernel"].shape[-1] == 128
  assert "extra2" not in variables["params"]
