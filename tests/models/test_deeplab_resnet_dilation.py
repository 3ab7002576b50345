"""ResNet `replace_stride_with_dilation` / `output_stride` (the DeepLab and FCN backbones).

torchvision's semantics: a dilated stage keeps stride 1 and doubles the
dilation; its first block still uses the previous dilation. Checked by
feature strides, an unchanged variable tree, and logits equal to
torchvision's ResNet-50 built with the same `replace_stride_with_dilation`
(the (True, True, True) case exercises the first-block rule in every stage).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables


def _feature_shapes(name, height, width, **kwargs):
  model = create_model(name, return_features=True, **kwargs)
  variables = abstract_variables(model, (1, height, width, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32))
  return {k: v.shape[1:3] for k, v in features.items()}


@pytest.mark.parametrize("output_stride,strides", [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16)), (32, (4, 8, 16, 32))])
@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
def test_feature_strides(name, output_stride, strides):
  shapes = _feature_shapes(name, 64, 96, output_stride=output_stride)
  assert shapes["stem"] == (32, 48)
  assert [shapes[f"stage{i}"] for i in range(1, 5)] == [(64 // s, 96 // s) for s in strides]
  same = _feature_shapes(name, 64, 96, replace_stride_with_dilation={8: (False, True, True), 16: (False, False, True),
                                                                    32: (False, False, False)}[output_stride])
  assert same == shapes


def _shapes(tree):
  return jax.tree_util.tree_map(lambda leaf: leaf.shape, tree)


def test_variables_unchanged_by_dilation():
  plain = abstract_variables(create_model("resnet101"), (1, 64, 64, 3))
  dilated = abstract_variables(create_model("resnet101", output_stride=8), (1, 64, 64, 3))
  assert _shapes(plain) == _shapes(dilated)


@pytest.mark.parametrize("kwargs,match", [
    (dict(output_stride=4), r"output_stride=4 is not supported \(allowed: 8, 16, 32\)"),
    (dict(output_stride=12), r"allowed: 8, 16, 32"),
    (dict(output_stride=8, replace_stride_with_dilation=(False, True, True)), "not both"),
    (dict(replace_stride_with_dilation=(True, True)), "must be 3 bools"),
    (dict(replace_stride_with_dilation=(0, 1, 1)), "must be 3 bools"),
])
def test_bad_dilation_options(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("resnet50", **kwargs)


def test_models_that_cannot_dilate():
  with pytest.raises(UserError, match="stem='cifar' cannot dilate"):
    create_model("resnet18_cifar", output_stride=8)
  with pytest.raises(UserError, match="last_stage_strides=2"):
    create_model("gsop_resnet50", output_stride=16)
  with pytest.raises(UserError, match="no option output_stride"):  # the CIFAR ResNets have no dilation at all
    create_model("resnet20", output_stride=8)


@pytest.mark.parametrize("replace", [(False, False, True), (True, True, True)])
def test_logits_match_dilated_torchvision_resnet50(replace):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from test_deeplab_torch_parity import randomize_batchnorms
  from jaxcnn.convert import torch_to_flax
  torch.manual_seed(0)
  reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=list(replace))
  randomize_batchnorms(reference, torch.Generator().manual_seed(1), size=(48, 48))
  # The first block of stage 4 keeps the previous dilation, the others double it.
  first, rest = {(False, False, True): (1, 2), (True, True, True): (4, 8)}[replace]
  assert reference.layer4[0].conv2.dilation == (first, first) and reference.layer4[1].conv2.dilation == (rest, rest)
  images = np.random.default_rng(0).normal(size=(2, 3, 48, 48)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images)).numpy()
  model = create_model("resnet50", replace_stride_with_dilation=replace)
  logits = model.apply(torch_to_flax("resnet50", reference.state_dict()), images.transpose(0, 2, 3, 1))
  diff, scale = float(np.max(np.abs(np.asarray(logits) - expected))), float(np.max(np.abs(expected)))
  print(f"resnet50 dilated {replace}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-1
  assert diff < 1e-4
