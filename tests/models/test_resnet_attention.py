"""ResNets with attention blocks: counts equal timm's / the papers', the blocks really sit on the residual branch."""
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

import jaxcnn
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count


@pytest.mark.parametrize("name,count", [
    ("se_resnet50", 28_088_024),     # timm seresnet50
    ("se_resnet18", 11_779_624),     # timm seresnet18
    ("eca_resnet50", 25_557_118),    # ECA-Net paper: 25.56M
    ("cbam_resnet50", 28_089_624),   # CBAM paper / authors' code: 28.09M
    # GSoP-Net1 paper: 28.29M; = resnet50 + 4 GSoP blocks of 641 C + 66,688 (C = 256..2048).
    ("gsop_resnet50", 25_557_032 + 641 * (256 + 512 + 1024 + 2048) + 4 * 66_688),
])
def test_parameter_counts(name, count):
  variables = abstract_variables(jaxcnn.create_model(name), (1, 224, 224, 3))
  assert param_count(variables["params"]) == count


def test_attn_option_on_any_resnet_and_cifar_resnet():
  a = abstract_variables(jaxcnn.create_model("resnet50", attn="se"), (1, 64, 64, 3))
  b = abstract_variables(jaxcnn.create_model("se_resnet50"), (1, 64, 64, 3))
  assert jax.tree.map(lambda x: x.shape, a) == jax.tree.map(lambda x: x.shape, b)
  cifar = abstract_variables(jaxcnn.create_model("resnet20", attn="cbam"), (1, 32, 32, 3))
  paths = traverse_util.flatten_dict(cifar["params"], sep="/")
  assert sum(1 for p in paths if "/se/" in p) > 0 and any(p.startswith("layer3_2/se/") for p in paths)


def test_se_block_changes_the_residual_branch_only_in_attention_models():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  model = jaxcnn.create_model("resnet20", attn="se", width=0.5)
  variables = model.init(jax.random.key(1), x)
  y = model.apply(variables, x)
  # Zeroing the SE gate's output bias to -inf-like values turns every gate off -> a different output.
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  off = {k: (jnp.full_like(v, -1e4) if k.endswith("se/fc2/bias") else v) for k, v in flat.items()}
  assert any(k.endswith("se/fc2/bias") for k in flat), sorted(flat)[:20]
  y_off = model.apply({**variables, "params": traverse_util.unflatten_dict(off, sep="/")}, x)
  assert not jnp.allclose(y, y_off)


def test_gsop_resnet50_layout_follows_gsop_net1():
  """GSoP only in each stage's last block, a strided reduction in stage 1, the last stage at 1/16."""
  model = jaxcnn.create_model("gsop_resnet50")
  variables = abstract_variables(model, (1, 224, 224, 3))
  blocks = sorted({p.split("/")[0] for p in traverse_util.flatten_dict(variables["params"], sep="/")
                   if "/se/" in p})
  assert blocks == ["layer1_2", "layer2_3", "layer3_5", "layer4_2"]
  features = jax.eval_shape(lambda v, x: model.clone(return_features=True).apply(v, x), variables,
                            jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert features["stage4"].shape == (1, 14, 14, 2048)
  _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                            variables, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  reduce = traverse_util.flatten_dict(state["intermediates"], sep="/")
  assert reduce["layer1_2/se/reduce/__call__"][0].shape == (1, 28, 28, 128)
  assert reduce["layer2_3/se/reduce/__call__"][0].shape == (1, 28, 28, 128)


def test_bad_attn_names():
  with pytest.raises(UserError, match="attn"):
    jaxcnn.create_model("resnet50", attn="sse")
  with pytest.raises(UserError, match="post-activation"):
    jaxcnn.create_model("preact_resnet18", attn="se")
  with pytest.raises(UserError, match="attn_blocks"):
    jaxcnn.create_model("resnet50", attn="se", attn_blocks="first")
