"""VGG: torchvision's parameter counts, shapes at 32x32 and 224x224, train/eval behaviour, features."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count
from model_checks import check_bfloat16, check_bn_axis_name, random_variables

# torchvision 0.29 `sum(p.numel() for p in model.parameters())`, 1000 classes.
TORCHVISION_COUNTS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_count_is_torchvisions(name):
  variables = abstract_variables(create_model(name), (1, 224, 224, 3))
  assert param_count(variables["params"]) == TORCHVISION_COUNTS[name]
  assert ("batch_stats" in variables) == name.endswith("_bn")


@pytest.mark.parametrize("size", [32, 224])
def test_logit_shapes(size):
  model = create_model("vgg16_bn", num_classes=10)
  variables = abstract_variables(model, (1, size, size, 3))
  x = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), (3, 10))


def _tiny(**kwargs):
  return create_model("vgg11_bn", num_classes=5, classifier_width=16, **kwargs)


def test_train_step_updates_batch_stats_and_uses_dropout():
  model = _tiny()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = random_variables(model, x.shape)
  apply = jax.jit(model.apply)
  eval_logits = apply(variables, x)
  chex.assert_shape(eval_logits, (2, 5))
  chex.assert_tree_all_finite(eval_logits)

  @jax.jit
  def train(key):
    return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
  (a, state), (b, _) = train(jax.random.key(2)), train(jax.random.key(3))
  assert not np.allclose(a, b)  # dropout acts in training
  before = variables["batch_stats"]["block1_bn1"]["mean"]
  assert not np.allclose(state["batch_stats"]["block1_bn1"]["mean"], before)
  chex.assert_trees_all_close(apply(variables, x), eval_logits)  # eval is deterministic


def test_features_are_pre_pool_block_outputs():
  model = _tiny(return_features=True)
  x = jnp.ones((1, 64, 64, 3))
  features = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), x)
  assert sorted(features) == [f"stage{i}" for i in range(1, 6)]
  for i, width in enumerate((64, 128, 256, 512, 512)):
    chex.assert_shape(features[f"stage{i + 1}"], (1, 64 >> i, 64 >> i, width))


def test_user_errors():
  with pytest.raises(UserError, match="stage_sizes"):
    create_model("vgg16", stage_sizes=(1, 2))
  with pytest.raises(UserError, match="at least 32x32"):
    _tiny().init(jax.random.key(0), jnp.ones((1, 16, 16, 3)))


@pytest.mark.parametrize("name,kwargs", [("vgg11_bn", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("vgg11_bn", {})])
def test_bn_axis_name_reaches_the_batchnorms(name, kwargs):
  check_bn_axis_name(name, **kwargs)


# CIFAR heads: kuangliu/pytorch-cifar's VGG16 has 14,728,266 parameters, bearpaw/pytorch-classification's vgg19_bn
# "20.04M"; by formula: the _bn convolution trunk plus one 512 -> 10 linear layer.
def _bn_trunk_count(stage_sizes):
  count, channels = 0, 3
  for num_convs, width in zip(stage_sizes, (64, 128, 256, 512, 512)):
    for _ in range(num_convs):
      count += 9 * channels * width + width + 2 * width  # kernel, bias, BN scale and bias
      channels = width
  return count


@pytest.mark.parametrize("depth,stage_sizes", [(11, (1, 1, 2, 2, 2)), (16, (2, 2, 3, 3, 3)), (19, (2, 2, 4, 4, 4))])
def test_cifar_head_parameter_counts(depth, stage_sizes):
  variables = abstract_variables(create_model(f"vgg{depth}_bn_cifar"), (1, 32, 32, 3))
  assert param_count(variables["params"]) == _bn_trunk_count(stage_sizes) + 512 * 10 + 10
  assert "fc" in variables["params"] and "fc1" not in variables["params"]


def test_cifar_head_counts_of_the_references():
  count = lambda name: param_count(abstract_variables(create_model(name), (1, 32, 32, 3))["params"])
  assert count("vgg16_bn_cifar") == 14_728_266
  assert count("vgg19_bn_cifar") == 20_040_522


def test_cifar_head_is_a_linear_map_of_the_pooled_last_block():
  model = create_model("vgg11_bn_cifar", num_classes=4)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = random_variables(model, x.shape)
  logits = model.apply(variables, x)
  chex.assert_shape(logits, (2, 4))
  features = model.clone(return_features=True).apply(variables, x)
  pooled = jnp.max(features["stage5"].reshape(2, 2, 2, 2, 2, 512), axis=(2, 4)).mean(axis=(1, 2))
  fc = variables["params"]["fc"]
  chex.assert_trees_all_close(logits, pooled @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)
