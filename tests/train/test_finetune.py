"""Merging pretrained weights and freezing parameters."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.errors import UserError
from jaxcnn.train import finetune


def test_merge_keeps_fresh_arrays_whose_shape_differs():
  fresh = {"body": {"kernel": jnp.zeros((3, 4))}, "head": {"kernel": jnp.zeros((4, 10))}}
  pre = {"body": {"kernel": np.ones((3, 4))}, "head": {"kernel": np.ones((4, 1000))}}
  merged = finetune.merge(fresh, pre, "parameters")
  np.testing.assert_array_equal(merged["body"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["head"]["kernel"], 0.0)


def test_merge_rejects_missing_and_unknown_arrays():
  fresh = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
  with pytest.raises(UserError, match="lacks parameters of the model: b"):
    finetune.merge(fresh, {"a": np.ones(2)}, "parameters")
  with pytest.raises(UserError, match="has parameters the model lacks: c"):
    finetune.merge(fresh, {"a": np.ones(2), "b": np.ones(2), "c": np.ones(2)}, "parameters")


def test_freeze_zeroes_updates_of_matching_paths():
  params = {"backbone": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(3)}}
  tx = finetune.freeze(optax.sgd(1.0), "^backbone/")
  grads = {"backbone": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(3)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["backbone"]["kernel"], 0.0)
  np.testing.assert_array_equal(updates["head"]["kernel"], -1.0)


def test_freeze_errors():
  with pytest.raises(UserError, match="not a valid regular expression"):
    finetune.freeze(optax.sgd(1.0), "(")
  tx = finetune.freeze(optax.sgd(1.0), ".*")
  with pytest.raises(UserError, match="freezes every parameter"):
    tx.init({"a": jnp.ones(2)})


def test_missing_weights_file():
  with pytest.raises(UserError, match="no such file"):
    finetune.load_pretrained("/nonexistent/weights.pth", "resnet18")
