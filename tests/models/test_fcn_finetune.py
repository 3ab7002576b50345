"""FCN-VGG16 fine-tuning from ImageNet VGG-16 weights through the registry hook (`FCNVGG.adapt_pretrained`)."""
import logging
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxcnn import create_model, registry
from jaxcnn.convert import torch_to_flax
from jaxcnn.errors import UserError
from jaxcnn.models.fcn import FCNVGG, adapt_pretrained
from jaxcnn.train import finetune
from jaxcnn.utils import abstract_variables


def _state(variables):
  variables = dict(variables)
  params = variables.pop("params")
  return types.SimpleNamespace(params=params, model_state=variables, ema_params={},
                               replace=lambda **kw: types.SimpleNamespace(**kw))


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
  torch.manual_seed(0)
  source = torchvision.models.vgg16(num_classes=1000).eval()
  path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
  torch.save(source.state_dict(), path)
  return source, str(path)


def test_vgg16_weights_load_backbone_and_fc6_fc7_into_fcn8s(vgg16_file, caplog):
  source, path = vgg16_file
  model = create_model("fcn8s", num_classes=5)
  state = _state(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  config = types.SimpleNamespace(weights=path, converter_name="vgg16", into="")
  with caplog.at_level(logging.INFO, logger="jaxcnn"):
    new = finetune.apply_pretrained(state, config, "fcn8s")

  reference = torch_to_flax("vgg16", source.state_dict())["params"]
  expected = {k: v for k, v in reference.items() if not k.startswith("fc")}
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.params["backbone"]), expected)
  np.testing.assert_array_equal(new.params["fc6"]["kernel"], reference["fc1"]["kernel"].reshape(7, 7, 512, 4096))
  np.testing.assert_array_equal(new.params["fc7"]["kernel"][0, 0], reference["fc2"]["kernel"])
  np.testing.assert_array_equal(new.params["fc7"]["bias"], reference["fc2"]["bias"])
  new_layers = ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4")
  for name in new_layers:
    chex.assert_trees_all_equal(new.params[name], state.params[name])
  assert "kept their initialisation (absent from the weights): " + ", ".join(sorted(new_layers)) in caplog.text

  # The loaded backbone + fc6 + fc7 compute torchvision's vgg16 up to the second ReLU: at the centre of a
  # 7x7 pool5 map (224x224 input) the 7x7 fc6 sees exactly what the flattening fc1 does.
  x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
  _, inter = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=lambda m, _: m.name == "fc7"))(
      {"params": new.params}, x)
  fc7 = np.maximum(np.asarray(inter["intermediates"]["fc7"]["__call__"][0])[0, 3, 3], 0)
  with torch.no_grad():
    t = source.avgpool(source.features(torch.from_numpy(x).permute(0, 3, 1, 2)))
    expected_fc7 = source.classifier[:5](torch.flatten(t, 1))[0].numpy()
  scale = np.abs(expected_fc7).max()
  assert scale > 0
  np.testing.assert_allclose(fc7, expected_fc7, atol=1e-4 * max(scale, 1.0), rtol=0)


def test_hook_is_found_through_the_registry():
  for name in ("fcn32s", "fcn16s", "fcn8s"):
    assert registry.pretrained_adapter(name) is adapt_pretrained
  assert FCNVGG.adapt_pretrained is adapt_pretrained
  assert registry.pretrained_adapter("vgg16") is None  # so finetune falls back to the model's hook


def test_fcn32s_weights_start_fcn16s_with_new_skip_layers():
  fcn32 = abstract_variables(create_model("fcn32s"), (1, 32, 32, 3))
  fcn16 = abstract_variables(create_model("fcn16s"), (1, 32, 32, 3))
  out = adapt_pretrained(fcn32, fcn16)["params"]
  assert set(out) == set(fcn16["params"])
  for name in ("score_pool4", "upscore2"):
    assert out[name] is fcn16["params"][name]
  for name in ("backbone", "fc6", "fc7", "score_fr"):
    assert out[name] is fcn32["params"][name]


def test_other_targets_and_weights_pass_through():
  # A classification target (or a subtree load) is not touched; bad weights still fail in the loader.
  vgg = abstract_variables(create_model("vgg16"), (1, 32, 32, 3))
  assert adapt_pretrained(vgg, vgg) is vgg
  resnet = abstract_variables(create_model("resnet18"), (1, 32, 32, 3))
  fcn = abstract_variables(create_model("fcn8s"), (1, 32, 32, 3))
  assert adapt_pretrained(resnet, fcn) is resnet
  with pytest.raises(UserError, match="not vgg16 classification weights"):
    adapt_pretrained({"params": {"fc1": {}, "block1_conv1": {}}}, fcn)
