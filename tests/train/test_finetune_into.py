"""finetune.into: a classifier's weights into a dense model's backbone; the model-layout hook via the registry."""
import inspect
import logging
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxcnn import registry
from jaxcnn.convert import torch_to_flax
from jaxcnn.errors import UserError
from jaxcnn.layers import Conv
from jaxcnn.train import finetune


class TinySeg(nn.Module):
  """A dense model shaped like torchvision's: `backbone` (resnet18 features) and a new head."""

  def setup(self):
    self.backbone = registry.create_model("resnet18", return_features=True)
    self.head = Conv(8, (1, 1), use_bias=False)
    self.head_bn = nn.BatchNorm()
    self.classifier = Conv(3, (1, 1))

  def __call__(self, x, train: bool = False):
    features = self.backbone(x, train=train)
    y = nn.relu(self.head_bn(self.head(features["stage4"]), use_running_average=not train))
    return self.classifier(y), features


def torch_resnet18():
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=1000).eval()
  with torch.no_grad():  # BN statistics that are not the identity, so a misplaced one shows
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  return model


@pytest.fixture(scope="module")
def state():
  variables = jax.jit(TinySeg().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables.pop("params")
  return types.SimpleNamespace(params=params, model_state=dict(variables), ema_params={},
                               replace=lambda **kw: types.SimpleNamespace(**kw))


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
  source = torch_resnet18()
  path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
  torch.save(source.state_dict(), path)
  return source, str(path)


def test_classifier_weights_go_into_the_backbone_and_heads_keep_their_init(resnet_file, state, caplog):
  source, path = resnet_file
  config = types.SimpleNamespace(weights=path, converter_name="resnet18", into="backbone")
  with caplog.at_level(logging.INFO, logger="jaxcnn"):
    new = finetune.apply_pretrained(state, config, "tiny_seg")

  reference = torch_to_flax("resnet18", source.state_dict())
  expected = {k: v for k, v in reference["params"].items() if k != "fc"}
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.params["backbone"]), expected)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.model_state["batch_stats"]["backbone"]),
                              reference["batch_stats"])
  for name in ("head", "classifier"):
    chex.assert_trees_all_equal(new.params[name], state.params[name])
  chex.assert_trees_all_equal(new.model_state["batch_stats"]["head_bn"], state.model_state["batch_stats"]["head_bn"])
  log = caplog.text
  assert "kept their initialisation" in log and "params:classifier" in log and "batch_stats:head_bn" in log
  assert "skipped (no place in the model): params:fc" in log
  assert "params:backbone" not in log.split("kept their initialisation")[1].splitlines()[0]

  # The loaded backbone computes torchvision's features.
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  _, features = jax.jit(TinySeg().apply)({"params": new.params, **new.model_state}, x)
  with torch.no_grad():
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = source.maxpool(source.relu(source.bn1(source.conv1(t))))
    t = source.layer4(source.layer3(source.layer2(source.layer1(t))))
  np.testing.assert_allclose(features["stage4"], t.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)


def test_bad_into_is_one_line(resnet_file, state):
  _, path = resnet_file
  config = types.SimpleNamespace(weights=path, converter_name="resnet18", into="encoder")
  with pytest.raises(UserError, match="finetune.into 'encoder' is not a subtree.*backbone, classifier"):
    finetune.apply_pretrained(state, config, "tiny_seg")
  config.into = "classifier"
  with pytest.raises(UserError, match="no array fits finetune.into 'classifier'"):
    finetune.apply_pretrained(state, config, "tiny_seg")


def test_whole_model_loading_is_still_strict(resnet_file, state):
  _, path = resnet_file
  config = types.SimpleNamespace(weights=path, converter_name="resnet18", into="")
  with pytest.raises(UserError, match="finetune.weights has parameters the model lacks"):
    finetune.apply_pretrained(state, config, "tiny_seg")


def test_model_layout_lives_in_the_model_file():
  from jaxcnn.models.vit import ViT, adapt_pretrained
  assert registry.pretrained_adapter("vit_tiny_patch4_32") is adapt_pretrained
  assert ViT.adapt_pretrained is adapt_pretrained
  assert registry.pretrained_adapter("resnet18") is None
  assert registry.pretrained_adapter("not_a_model") is None
  assert "jaxcnn.models" not in inspect.getsource(finetune)


def test_vit_adapter_scans_and_resamples():
  from jaxcnn.models.vit import adapt_pretrained
  pre = {"params": {"blocks_0": {"w": np.zeros(2)}, "blocks_1": {"w": np.ones(2)},
                    "pos_embed": np.arange(17 * 4, dtype=np.float32).reshape(1, 17, 4), "cls_token": np.zeros((1, 1, 4))}}
  target = {"params": {"blocks": {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32)},
                       "pos_embed": jax.ShapeDtypeStruct((1, 37, 4), jnp.float32),
                       "cls_token": jax.ShapeDtypeStruct((1, 1, 4), jnp.float32)}}
  out = adapt_pretrained(pre, target)["params"]
  np.testing.assert_array_equal(out["blocks"]["w"], [[0, 0], [1, 1]])
  assert out["pos_embed"].shape == (1, 37, 4)
  np.testing.assert_array_equal(out["pos_embed"][:, 0], pre["params"]["pos_embed"][:, 0])  # class token kept
