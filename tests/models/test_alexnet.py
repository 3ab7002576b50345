"""AlexNet and ZFNet: parameter counts, shapes, the paper's feature-map sizes, LRN, input-size errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count


def _abstract_apply(model, size, batch=2):
  variables = abstract_variables(model, (1, size, size, 3))
  return variables, jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))


def test_alexnet_parameter_count_is_torchvisions():
  variables, logits = _abstract_apply(create_model("alexnet"), 224)
  assert param_count(variables["params"]) == 61_100_840  # torchvision alexnet
  chex.assert_shape(logits, (2, 1000))


def test_lrn_adds_no_parameters():
  variables, _ = _abstract_apply(create_model("alexnet", lrn=True), 224)
  assert param_count(variables) == 61_100_840


def test_zfnet_parameters_and_feature_map_sizes_of_the_paper():
  variables, logits = _abstract_apply(create_model("zfnet", num_classes=10), 224)
  # conv 7x7x3x96, 5x5x96x256, 3x3x256x384, 3x3x384x384, 3x3x384x256 (+ biases); fc 9216-4096-4096-10.
  convs = 7 * 7 * 3 * 96 + 96 + 5 * 5 * 96 * 256 + 256 + 9 * 256 * 384 + 384 + 9 * 384 * 384 + 384 + 9 * 384 * 256 + 256
  fcs = 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
  assert param_count(variables["params"]) == convs + fcs
  chex.assert_shape(logits, (2, 10))
  _, features = _abstract_apply(create_model("zfnet", return_features=True), 224)
  # Zeiler & Fergus fig. 3: 110 (conv1), pooled to 55; 26 (conv2) pooled to 13; 13 (conv3-5).
  assert [features[f"stage{i}"].shape[1] for i in range(1, 6)] == [110, 26, 13, 13, 13]


@pytest.mark.parametrize("name,size", [("alexnet", 63), ("alexnet", 100), ("zfnet", 47), ("zfnet", 64)])
def test_smallest_and_odd_input_sizes(name, size):
  _, logits = _abstract_apply(create_model(name, num_classes=3), size)
  chex.assert_shape(logits, (2, 3))


@pytest.mark.parametrize("name,size", [("alexnet", 62), ("zfnet", 32)])
def test_too_small_input_is_a_user_error(name, size):
  with pytest.raises(UserError, match="at least"):
    _abstract_apply(create_model(name), size)


def test_alexnet_features():
  _, features = _abstract_apply(create_model("alexnet", return_features=True), 224)
  assert {k: v.shape for k, v in features.items()} == {
      "stage1": (2, 55, 55, 64), "stage2": (2, 27, 27, 192), "stage3": (2, 13, 13, 384),
      "stage4": (2, 13, 13, 256), "stage5": (2, 13, 13, 256)}


@pytest.fixture(scope="module")
def alexnet_run():
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  models = {lrn: create_model("alexnet", num_classes=4, classifier_width=32, lrn=lrn) for lrn in (False, True)}
  variables = random_variables(models[False], x.shape)
  return x, models, variables


def test_lrn_changes_the_output_and_dropout_acts_in_training(alexnet_run):
  x, models, variables = alexnet_run
  plain, lrn = (jax.jit(models[k].apply)(variables, x) for k in (False, True))
  chex.assert_tree_all_finite((plain, lrn))
  assert not np.allclose(plain, lrn, atol=1e-3)
  train = jax.jit(lambda key: models[False].apply(variables, x, train=True, rngs={"dropout": key}))
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))


def test_bad_dropout_rate_is_a_user_error():
  with pytest.raises(UserError, match="dropout_rate"):
    create_model("alexnet", dropout_rate=1.0)


@pytest.mark.parametrize("name,kwargs", [("alexnet", {}), ("zfnet", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


def test_alexnet_cifar_is_bearpaws_layout():
  """bearpaw/pytorch-classification's CIFAR AlexNet: 2,472,266 parameters at 10 classes (its README: 2.47M)."""
  model = create_model("alexnet_cifar")
  variables, logits = _abstract_apply(model, 32)
  convs = (11 * 11 * 3 * 64 + 64 + 5 * 5 * 64 * 192 + 192 + 9 * 192 * 384 + 384 + 9 * 384 * 256 + 256
           + 9 * 256 * 256 + 256)
  assert param_count(variables["params"]) == convs + 256 * 10 + 10 == 2_472_266
  chex.assert_shape(logits, (2, 10))
  _, features = _abstract_apply(model.clone(return_features=True), 32)
  # conv1 11x11/4 padded by 5: 32 -> 8; 2x2 pools: 8 -> 4 (conv2) -> 2 (conv3-5) -> 1 before the head.
  assert [features[f"stage{i}"].shape[1] for i in range(1, 6)] == [8, 4, 2, 2, 2]


@pytest.mark.parametrize("size,ok", [(29, True), (28, False), (64, True)])
def test_alexnet_cifar_input_sizes(size, ok):
  model = create_model("alexnet_cifar", num_classes=3)
  if ok:
    chex.assert_shape(_abstract_apply(model, size)[1], (2, 3))
  else:
    with pytest.raises(UserError, match="at least 29x29"):
      _abstract_apply(model, size)
