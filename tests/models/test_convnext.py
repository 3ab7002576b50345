"""ConvNeXt: torchvision's parameter counts, shapes, features, layer scale, stochastic depth, learning."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, random_variables, train_losses
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.convnext import ConvNeXtBlock
from jaxcnn.utils import abstract_variables, param_count

TORCHVISION_COUNTS = {"convnext_tiny": 28_589_128, "convnext_small": 50_223_688,
                      "convnext_base": 88_591_464, "convnext_large": 197_767_336}


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_count_is_torchvisions(name):
  variables = abstract_variables(create_model(name), (1, 224, 224, 3))
  assert set(variables) == {"params"}  # no BatchNorm anywhere
  assert param_count(variables["params"]) == TORCHVISION_COUNTS[name]


@pytest.mark.parametrize("size", [32, 224])
def test_logit_shapes(size):
  model = create_model("convnext_tiny", num_classes=10)
  variables = abstract_variables(model, (1, size, size, 3))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), (2, 10))


def test_features():
  model = create_model("convnext_tiny", return_features=True)
  variables = abstract_variables(model, (1, 64, 64, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert {k: v.shape for k, v in features.items()} == {
      "stem": (1, 16, 16, 96), "stage1": (1, 16, 16, 96), "stage2": (1, 8, 8, 192),
      "stage3": (1, 4, 4, 384), "stage4": (1, 2, 2, 768)}
  assert "classifier" not in variables["params"]


def _tiny(**kwargs):
  return create_model("convnext_tiny", dims=(8, 16), depths=(1, 1), num_classes=3, **kwargs)


def test_block_starts_near_identity_with_layer_scale_1e_6():
  block = ConvNeXtBlock()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  with jax.threefry_partitionable(False):  # faster to compile on CPU, same distributions
    variables = jax.jit(block.init)(jax.random.key(1), x)
  chex.assert_trees_all_equal(variables["params"]["layer_scale"], jnp.full((16,), 1e-6))
  out = jax.jit(block.apply)(variables, x)
  chex.assert_trees_all_close(out, x, atol=1e-5)
  assert not np.array_equal(out, x)


def test_stochastic_depth_grows_from_zero_to_the_rate():
  """With drop_path_rate=1 the first block (rate 0) always keeps its branch, the last (rate 1) never does."""
  model = _tiny(drop_path_rate=1.0)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = random_variables(model, x.shape)

  @jax.jit
  def intermediates(key):
    _, state = model.apply(variables, x, train=True, rngs={"drop_path": key}, capture_intermediates=True,
                           mutable=["intermediates"])
    return {k: v["__call__"][0] for k, v in state["intermediates"].items() if k != "__call__"}
  out = intermediates(jax.random.key(1))
  chex.assert_trees_all_close(out["stage2_block0"], out["downsample2_conv"])          # dropped
  assert not np.allclose(out["stage1_block0"], out["stem_norm"], atol=1e-3)          # kept

  eval_logits = jax.jit(lambda v: model.apply(v, x))(variables)  # eval needs no rng and keeps all
  train_logits = jax.jit(lambda v: model.apply(v, x, train=True, rngs={"drop_path": jax.random.key(2)}))(variables)
  assert not np.allclose(eval_logits, train_logits)


@pytest.mark.parametrize("kwargs,match", [(dict(depths=(1, 1), dims=(8,)), "same length"),
                                          (dict(depths=(0, 1, 1, 1)), "positive"),
                                          (dict(drop_path_rate=-0.1), "drop_path_rate"),
                                          (dict(patch_size=0), "patch_size")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("convnext_tiny", **kwargs)


def test_narrow_convnext_learns_digits():
  model = create_model("convnext_tiny", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_classes=10)
  losses = train_losses(model, steps=12, learning_rate=1e-2)
  print(f"convnext dims 8-64 loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("name,kwargs", [("convnext_tiny", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


def test_convnext_cifar_count_and_resolutions():
  """simple-convnext's CIFAR-10 ConvNeXt ("6.4M"): patch size 1, depths 2-2-2-2, dims 64-128-256-512."""
  model = create_model("convnext_cifar")
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert model.num_classes == 10 and model.drop_path_rate == 0.0
  assert param_count(variables["params"]) == 6_378_378
  assert variables["params"]["stem_conv"]["kernel"].shape == (1, 1, 3, 64)
  features = jax.eval_shape(model.clone(return_features=True).apply, variables,
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert {k: v.shape for k, v in features.items()} == {
      "stem": (1, 32, 32, 64), "stage1": (1, 32, 32, 64), "stage2": (1, 16, 16, 128),
      "stage3": (1, 8, 8, 256), "stage4": (1, 4, 4, 512)}


def test_patch_size_sets_the_stem_kernel_and_stride():
  model = create_model("convnext_tiny", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), patch_size=2, num_classes=3)
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert variables["params"]["stem_conv"]["kernel"].shape == (2, 2, 3, 8)
  features = jax.eval_shape(model.clone(return_features=True).apply, variables,
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert [features[f"stage{s}"].shape[1] for s in range(1, 5)] == [16, 8, 4, 2]
