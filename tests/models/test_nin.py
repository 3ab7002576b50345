"""Network in Network: parameter counts of the released models, shapes, class maps, input sizes."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count


def _conv(k, c_in, c_out):
  return k * k * c_in * c_out + c_out


def test_parameter_counts_of_the_released_caffe_models():
  cifar = (_conv(5, 3, 192) + _conv(1, 192, 160) + _conv(1, 160, 96) + _conv(5, 96, 192) + 2 * _conv(1, 192, 192)
           + _conv(3, 192, 192) + _conv(1, 192, 192) + _conv(1, 192, 10))
  imagenet = (_conv(11, 3, 96) + 2 * _conv(1, 96, 96) + _conv(5, 96, 256) + 2 * _conv(1, 256, 256)
              + _conv(3, 256, 384) + 2 * _conv(1, 384, 384) + _conv(3, 384, 1024) + _conv(1, 1024, 1024)
              + _conv(1, 1024, 1000))
  assert param_count(abstract_variables(create_model("nin"), (1, 32, 32, 3))["params"]) == cifar == 966_986
  assert (param_count(abstract_variables(create_model("nin_imagenet"), (1, 224, 224, 3))["params"])
          == imagenet == 7_595_176)


@pytest.mark.parametrize("name,size,classes", [("nin", 32, 10), ("nin", 224, 10), ("nin_imagenet", 224, 1000),
                                               ("nin_imagenet", 39, 1000)])
def test_logit_shapes(name, size, classes):
  model = create_model(name)
  variables = abstract_variables(model, (1, size, size, 3))
  chex.assert_shape(jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)),
                    (2, classes))


def test_feature_maps_match_the_caffe_models():
  for name, size, expected in [("nin", 32, [(32, 32, 96), (16, 16, 192), (8, 8, 10)]),
                               ("nin_imagenet", 224, [(54, 54, 96), (27, 27, 256), (13, 13, 384), (6, 6, 1000)])]:
    model = create_model(name, return_features=True)
    variables = abstract_variables(model, (1, size, size, 3))
    features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    assert [features[f"stage{i + 1}"].shape[1:] for i in range(len(expected))] == expected


def test_logits_are_the_mean_of_the_class_maps_and_dropout_acts_in_training():
  model = create_model("nin", num_classes=5)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = random_variables(model, x.shape)
  maps = jax.jit(create_model("nin", num_classes=5, return_features=True).apply)(variables, x)["stage3"]
  logits = jax.jit(model.apply)(variables, x)
  chex.assert_trees_all_close(logits, jnp.mean(maps, axis=(1, 2)), rtol=1e-5)
  assert float(jnp.min(logits)) >= 0.0  # a ReLU follows the last conv, as in the released model
  train = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key}))
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))


def test_user_errors():
  with pytest.raises(UserError, match="config"):
    create_model("nin", config="mnist")
  with pytest.raises(UserError, match="at least 39x39"):
    abstract_variables(create_model("nin_imagenet"), (1, 32, 32, 3))


@pytest.mark.parametrize("name,kwargs", [("nin", {}), ("nin_imagenet", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)
