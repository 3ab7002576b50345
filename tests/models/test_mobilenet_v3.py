"""MobileNetV3: torchvision's parameter counts, feature maps (plain and dilated), blocks, options, learning."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, check_bn_axis_name, random_variables, train_losses
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count


def _count(name, **kwargs):
  return param_count(abstract_variables(create_model(name, **kwargs), (1, 64, 64, 3))["params"])


@pytest.mark.parametrize("name,kwargs,count", [
    ("mobilenet_v3_large", {}, 5_483_032), ("mobilenet_v3_small", {}, 2_542_856),
    ("mobilenet_v3_large", dict(width_mult=0.75), 3_377_576),
    ("mobilenet_v3_large", dict(reduced_tail=True), 2_569_352),
    ("mobilenet_v3_small", dict(width_mult=0.75), 1_653_920),
    ("mobilenet_v3_small", dict(width_mult=1.25, reduced_tail=True), 1_567_008)])
def test_counts_are_torchvisions(name, kwargs, count):
  assert _count(name, **kwargs) == count  # torchvision.models.<name>(**kwargs)


def _feature_shapes(name, size, **kwargs):
  model = create_model(name, return_features=True, **kwargs)
  variables = abstract_variables(model, (1,) + size + (3,))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1,) + size + (3,), jnp.float32))
  return {k: v.shape[1:] for k, v in features.items()}, variables


@pytest.mark.parametrize("dilated", [False, True])
def test_large_features_and_segmentation_taps(dilated):
  shapes, variables = _feature_shapes("mobilenet_v3_large", (64, 96), dilated=dilated)
  deep = (4, 6) if dilated else (2, 3)
  assert shapes == {"stem": (32, 48, 16), "stage1": (32, 48, 16), "stage2": (16, 24, 24),
                    "stage3": (8, 12, 40), "stage4": (4, 6, 112), "stage5": deep + (160,),
                    "low": (8, 12, 40), "high": deep + (960,), "tail_expand": (4, 6, 672)}
  assert "classifier" not in variables["params"]


def test_small_features_and_segmentation_taps():
  shapes, _ = _feature_shapes("mobilenet_v3_small", (64, 64), dilated=True)
  assert shapes == {"stem": (32, 32, 16), "stage1": (32, 32, 16), "stage2": (16, 16, 16),
                    "stage3": (8, 8, 24), "stage4": (4, 4, 48), "stage5": (4, 4, 96),
                    "low": (8, 8, 24), "high": (4, 4, 576), "tail_expand": (4, 4, 288)}


def test_backbone_tree_is_the_classifier_minus_its_head():
  """What a segmentation model's `backbone/` holds: every variable but `classifier`, dilated or not."""
  full = abstract_variables(create_model("mobilenet_v3_large"), (1, 64, 64, 3))
  backbone = abstract_variables(create_model("mobilenet_v3_large", dilated=True, return_features=True),
                                (1, 64, 64, 3))
  shapes = lambda tree: jax.tree.map(lambda v: v.shape, tree)
  assert shapes(backbone["params"]) == shapes({k: v for k, v in full["params"].items() if k != "classifier"})
  assert shapes(backbone["batch_stats"]) == shapes(full["batch_stats"])
  assert set(full["params"]["classifier"]) == {"fc1", "fc2"}


def test_blocks_follow_the_paper_tables():
  params = abstract_variables(create_model("mobilenet_v3_large"), (1, 64, 64, 3))["params"]
  assert "expand" not in params["block1"] and "se" not in params["block1"]   # 16 -> 16, no SE
  assert params["block4"]["depthwise"]["conv"]["kernel"].shape == (5, 5, 1, 72)
  assert params["block4"]["se"]["fc1"]["kernel"].shape == (1, 1, 72, 24)    # make_divisible(72 // 4, 8)
  assert params["block13"]["se"]["fc1"]["kernel"].shape == (1, 1, 672, 168)
  assert params["classifier"]["fc1"]["kernel"].shape == (960, 1280)


def test_dilation_changes_the_last_stage_only():
  """Same variables, different values: the dilated model's last stage sees a wider context."""
  model = create_model("mobilenet_v3_small", return_features=True)
  dilated = create_model("mobilenet_v3_small", return_features=True, dilated=True)
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  variables = random_variables(model, x.shape)
  plain, wide = jax.jit(model.apply)(variables, x), jax.jit(dilated.apply)(variables, x)
  chex.assert_trees_all_close(plain["stage4"], wide["stage4"])
  assert wide["high"].shape == (1, 4, 4, 576) and plain["high"].shape == (1, 2, 2, 576)
  assert not np.allclose(wide["high"][:, ::2, ::2], plain["high"], atol=1e-3)


def test_train_mode_updates_batch_stats_and_uses_dropout():
  model = create_model("mobilenet_v3_small", num_classes=4, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = random_variables(model, x.shape)
  run = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))
  (first, state), (second, _) = run(variables, jax.random.key(1)), run(variables, jax.random.key(2))
  chex.assert_shape(first, (2, 4))
  assert not np.allclose(first, second)
  assert not np.allclose(state["batch_stats"]["block4"]["expand"]["bn"]["var"],
                         variables["batch_stats"]["block4"]["expand"]["bn"]["var"])


@pytest.mark.parametrize("kwargs,match", [(dict(arch="medium"), "arch"), (dict(width_mult=0.0), "width_mult"),
                                          (dict(dropout_rate=1.0), "dropout_rate")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("mobilenet_v3_small", **kwargs)


@pytest.mark.slow  # compiling the train step dominates; the parity tests cover the forward pass
def test_small_learns_digits():
  losses = train_losses(create_model("mobilenet_v3_small", num_classes=10, dropout_rate=0.0), steps=10)
  print(f"mobilenet_v3_small loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.6 * losses[0]


def test_bfloat16_compute():
  check_bfloat16("mobilenet_v3_small")


def test_bn_axis_name_reaches_the_batchnorms():
  check_bn_axis_name("mobilenet_v3_small")
