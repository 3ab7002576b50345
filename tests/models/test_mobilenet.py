"""MobileNet v1 / v2: the paper's and torchvision's parameter counts, shapes, features, blocks, learning."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, check_bn_axis_name, random_variables, train_losses
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.mobilenet import InvertedResidual, make_divisible
from jaxcnn.layers.conv_norm import ConvBNAct
from jaxcnn.utils import abstract_variables, param_count


def _count(name, **kwargs):
  return param_count(abstract_variables(create_model(name, **kwargs), (1, 224, 224, 3))["params"])


def test_mobilenet_v1_counts_are_the_papers():
  # 4,231,976 = Keras' MobileNet(alpha=1) trainable parameters; the paper (Tables 6, 8): 4.2M, 2.6M, 1.3M, 0.5M.
  assert _count("mobilenet_v1") == 4_231_976
  for alpha, paper_millions in ((0.75, 2.6), (0.5, 1.3), (0.25, 0.5)):
    assert round(_count("mobilenet_v1", alpha=alpha) / 1e6, 1) == paper_millions


@pytest.mark.parametrize("width,count", [(1.0, 3_504_872), (0.35, 1_677_128), (0.5, 1_968_680),
                                         (0.75, 2_636_424), (1.4, 6_108_776)])
def test_mobilenet_v2_counts_are_torchvisions(width, count):
  assert _count("mobilenet_v2", width_mult=width) == count  # torchvision mobilenet_v2(width_mult=...)


def test_make_divisible_rounds_like_torchvision():
  assert [make_divisible(v, 8) for v in (32 * 0.35, 16 * 0.35, 1280.0, 96 * 0.75, 4.0)] == [16, 8, 1280, 72, 8]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("size", [32, 224])
def test_logit_shapes(name, size):
  model = create_model(name, num_classes=10)
  variables = abstract_variables(model, (1, size, size, 3))
  chex.assert_shape(jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)),
                    (2, 10))


@pytest.mark.parametrize("name,channels", [("mobilenet_v1", (32, 64, 128, 256, 512, 1024)),
                                           ("mobilenet_v2", (32, 16, 24, 32, 96, 320))])
def test_features_at_strides_2_to_32(name, channels):
  model = create_model(name, return_features=True)
  variables = abstract_variables(model, (1, 64, 64, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  expected = {"stem": (1, 32, 32, channels[0])}
  expected.update({f"stage{i}": (1, 64 >> i, 64 >> i, c) for i, c in enumerate(channels[1:], start=1)})
  assert {k: v.shape for k, v in features.items()} == expected
  assert "classifier" not in variables["params"]


def test_v1_depthwise_layers_are_grouped():
  variables = abstract_variables(create_model("mobilenet_v1", alpha=0.5), (1, 32, 32, 3))["params"]
  assert variables["block2"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 32)
  assert variables["block2"]["pointwise"]["conv"]["kernel"].shape == (1, 1, 32, 64)


@pytest.mark.parametrize("strides,in_channels,residual", [(1, 8, True), (2, 8, False), (1, 4, False)])
def test_inverted_residual_shortcut_only_where_shapes_match(strides, in_channels, residual):
  block = InvertedResidual(8, strides, 6, functools.partial(ConvBNAct, activation=jax.nn.relu6),
                           functools.partial(ConvBNAct, activation=None))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, in_channels))
  variables = random_variables(block, x.shape)
  # A zero projection BN scale and bias silence the branch: what is left is the shortcut.
  silent = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "project" in str(path) and "bn" in str(path) and
      path[-1].key in ("scale", "bias") else v, variables)
  apply = jax.jit(block.apply)
  out = apply(silent, x)
  if residual:
    chex.assert_trees_all_close(out, x)
  else:
    chex.assert_trees_all_close(out, jnp.zeros(out.shape))
  assert apply(variables, x).shape[1] == 8 // strides


def test_train_mode_updates_batch_stats():
  model = create_model("mobilenet_v2", width_mult=0.35, num_classes=4)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = random_variables(model, x.shape)
  logits, state = jax.jit(lambda v: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                                                mutable=["batch_stats"]))(variables)
  chex.assert_shape(logits, (2, 4))
  assert not np.allclose(state["batch_stats"]["block3"]["expand"]["bn"]["var"],
                         variables["batch_stats"]["block3"]["expand"]["bn"]["var"])


@pytest.mark.parametrize("name,kwargs,match", [("mobilenet_v1", dict(alpha=0.0), "alpha"),
                                               ("mobilenet_v2", dict(width_mult=-1.0), "width_mult"),
                                               ("mobilenet_v2", dict(round_nearest=0), "round_nearest"),
                                               ("mobilenet_v1", dict(dropout_rate=1.0), "dropout_rate")])
def test_user_errors(name, kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model(name, **kwargs)


def test_thin_mobilenet_v1_learns_digits():
  losses = train_losses(create_model("mobilenet_v1", alpha=0.25, num_classes=10), steps=12)
  print(f"mobilenet_v1 alpha=0.25 loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("name,kwargs", [("mobilenet_v1", {}), ("mobilenet_v2", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("mobilenet_v1", {}), ("mobilenet_v2", {})])
def test_bn_axis_name_reaches_the_batchnorms(name, kwargs):
  check_bn_axis_name(name, **kwargs)


def test_mobilenet_v2_cifar_keeps_resolution_in_the_stem_and_first_stages():
  """kuangliu/pytorch-cifar's layout: stride-1 stem and 24-channel stage, a 4x4 last map at 32x32."""
  model = create_model("mobilenet_v2_cifar", return_features=True)
  variables = abstract_variables(model, (1, 32, 32, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert {k: v.shape for k, v in features.items()} == {
      "stem": (1, 32, 32, 32), "stage1": (1, 32, 32, 24), "stage2": (1, 16, 16, 32),
      "stage3": (1, 8, 8, 96), "stage4": (1, 4, 4, 320)}
  # The strides add no parameters: torchvision's count minus the 1000-class head plus a 10-class one.
  cifar = create_model("mobilenet_v2_cifar")
  assert cifar.num_classes == 10 and cifar.dropout_rate == 0.0
  count = param_count(abstract_variables(cifar, (1, 32, 32, 3))["params"])
  assert count == 3_504_872 - 1281 * 1000 + 1281 * 10 == 2_236_682
