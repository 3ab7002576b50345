"""Dilated DenseNet (`output_stride` 16 / 8): feature strides, the classifier's variable tree, torch parity.

The reference is torchvision's densenet121 with random weights, changed the
way the dilated scheme says (the last transitions' `pool` replaced by an
identity, the dense layers' 3x3 `conv2` given dilation and padding d), and
compared on `relu(features(x))`, what the jaxcnn model returns as its last
stage. OS32 parity of the classifier is `test_densenet_torch_parity.py`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables


def _feature_shapes(output_stride, height, width):
  model = create_model("densenet121", output_stride=output_stride, return_features=True)
  variables = abstract_variables(model, (1, height, width, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32))
  return {k: v.shape for k, v in features.items()}


@pytest.mark.parametrize("output_stride,strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_feature_strides(output_stride, strides):
  height, width = 64, 96
  channels = (256, 512, 1024, 1024)
  expected = {"stem": (2, 32, 48, 64)}
  expected.update({f"stage{i + 1}": (2, height // s, width // s, c)
                   for i, (s, c) in enumerate(zip(strides, channels))})
  assert _feature_shapes(output_stride, height, width) == expected


def _tree_shapes(variables):
  return jax.tree_util.tree_map(lambda leaf: (leaf.shape, leaf.dtype), variables)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_variables_are_the_classifiers(output_stride):
  classifier = abstract_variables(create_model("densenet121"), (1, 64, 64, 3))
  dilated = abstract_variables(create_model("densenet121", output_stride=output_stride), (1, 64, 64, 3))
  assert _tree_shapes(dilated) == _tree_shapes(classifier)
  # As a backbone (no classifier head) the rest of the tree is still the classifier's.
  backbone = abstract_variables(create_model("densenet121", output_stride=output_stride, return_features=True),
                                (1, 64, 64, 3))
  classifier["params"].pop("classifier")
  assert _tree_shapes(backbone) == _tree_shapes(classifier)


def test_os32_is_the_classifier_and_logits_keep_their_shape():
  model = create_model("densenet121", output_stride=16)
  variables = abstract_variables(model, (1, 64, 64, 3))
  logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 64, 80, 3), jnp.float32))
  assert logits.shape == (2, 1000)
  assert create_model("densenet121").output_stride == 32


@pytest.mark.parametrize("kwargs,match", [
    (dict(output_stride=4), r"output_stride=4 .*allowed: 8, 16, 32"),
    (dict(output_stride=64), r"output_stride=64 .*allowed: 8, 16, 32"),
    (dict(output_stride=16, stem="cifar", block_config=(2, 2, 2)), "cannot dilate"),
    (dict(output_stride=8, block_config=(2, 2)), "at least 3 dense blocks"),
])
def test_bad_output_stride(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("densenet121", **kwargs)


def _dilated_torch_densenet121(output_stride):
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  from torchvision_parity import torchvision_model
  model = torchvision_model("densenet121")
  plan = {16: {"transition3": None, "denseblock4": 2},
          8: {"transition2": None, "transition3": None, "denseblock3": 2, "denseblock4": 4}}[output_stride]
  for name, dilation in plan.items():
    module = getattr(model.features, name)
    if dilation is None:
      module.pool = torch.nn.Identity()
    else:
      for layer in module.children():
        layer.conv2.dilation, layer.conv2.padding = (dilation, dilation), (dilation, dilation)
  return model


def _compare(output_stride, height, width):
  torch = pytest.importorskip("torch")
  from jaxcnn.convert import torch_to_flax
  reference = _dilated_torch_densenet121(output_stride)
  images = np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32)
  with torch.no_grad():
    expected = torch.relu(reference.features(torch.from_numpy(images))).numpy().transpose(0, 2, 3, 1)
  model = create_model("densenet121", output_stride=output_stride, return_features=True)
  variables = torch_to_flax("densenet121", reference.state_dict())
  variables["params"].pop("classifier")
  out = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1))["stage4"]
  assert out.shape == expected.shape == (1, height // output_stride, width // output_stride, 1024)
  return float(np.max(np.abs(np.asarray(out) - expected))), float(np.max(np.abs(expected)))


@pytest.mark.slow  # the same code path as output stride 16, one more dilated block
def test_os8_features_match_dilated_torchvision():
  diff, scale = _compare(8, 48, 64)
  print(f"densenet121 OS8: max |jax - torch| = {diff:.2e} (max |feature| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


def test_os16_features_match_dilated_torchvision():
  diff, scale = _compare(16, 64, 96)
  print(f"densenet121 OS16: max |jax - torch| = {diff:.2e} (max |feature| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4
