"""A trained model for the explain tests: LeNet-5 (modern) on the offline digits, 100 steps (~97% test
accuracy, ~12 CPU-s), trained once per session through experiments.run."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
  from experiments import run
  workdir = tmp_path_factory.mktemp("explain_run")
  run.main(["--exp=lenet_digits", f"--workdir={workdir}", "--config.model.name=lenet5_modern",
            "--config.train.loss=cross_entropy", "--config.train.steps=100", "--config.eval.every=100",
            "--config.checkpoint.every=100"])
  return str(workdir)


@pytest.fixture(scope="session")
def digits_model(digits_run):
  """(model, trained variables, 32 held-out digits normalised as in training [32, 32, 32, 1], labels)."""
  from sklearn.datasets import load_digits

  from jaxcnn import create_model
  from jaxcnn.data.config import resolve
  from jaxcnn.train.finetune import load_pretrained
  with open(f"{digits_run}/config.json") as f:
    mean, std = resolve(ml_collections.ConfigDict(json.load(f)).data).mean_std()
  digits = load_digits()
  images = jax.image.resize(jnp.asarray(digits.images[-32:] / 16.0, jnp.float32), (32, 32, 32), "linear")
  x = (images[..., None] - mean) / std
  return create_model("lenet5_modern"), load_pretrained(digits_run, "lenet5_modern"), x, np.asarray(digits.target[-32:])
