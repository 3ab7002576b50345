"""The CIFAR-10 CNN experiments of issue 3 start, train two steps and evaluate, on tfds mock CIFAR-10 data."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import get_experiment
from jaxcnn.train import train_and_evaluate

# Experiment -> its model's parameter count at 10 classes (see each model's docstring for the reference).
EXPERIMENTS = {
    "lenet5_cifar": 62_006,
    "alexnet_cifar": 2_472_266,
    "mobilenet_v2_cifar": 2_236_682,
    "convnext_cifar": 6_378_378,
    "vgg16_bn_cifar": 14_728_266,
}


def shrink(config):
  """Two steps of batch 8 on one device, one eval at the end, no checkpoints: the recipe itself is unchanged."""
  config.train.steps = 2
  config.train.batch_size = 8
  config.train.log_every = 1
  config.eval.every = 0
  config.eval.batch_size = 16
  config.checkpoint.every = 0
  config.checkpoint.use_async = False
  config.data.download = False
  return config


def test_docstrings_state_a_target_and_its_source():
  for name in EXPERIMENTS:
    _, doc = get_experiment(name)
    assert "Target:" in doc and "% test accuracy" in doc, name
    assert "github" in doc.lower() or "/" in doc.split("Target:")[0], name


# The heaviest compiles run in the slow set (CI time); the rest keep every recipe's path in CI.
SLOW = {"mobilenet_v2_cifar", "convnext_cifar"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(EXPERIMENTS)])
def test_experiment_runs_on_mock_cifar10(name, tmp_path):
  config, _ = get_experiment(name)
  assert config.data.name == "cifar10" and config.model.name == name
  with tfds.testing.mock_data(num_examples=16):
    summary = train_and_evaluate(shrink(config), str(tmp_path), devices=jax.devices()[:1])
  assert summary["step"] == 2
  assert summary["param_count"] == EXPERIMENTS[name]
  assert np.isfinite(summary["eval/loss"]) and 0.0 <= summary["eval/accuracy"] <= 1.0
