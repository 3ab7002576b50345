"""The CRNN experiments resolve: crnn_mjsynth is the paper's network and optimizer at 100 x 32 (no data needed)."""
import jax
import pytest
import jax.numpy as jnp

from experiments.configs import get_experiment
from jaxcnn.data import config as data_config
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import model_kwargs
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.utils import param_count


def test_crnn_mjsynth_resolves():
  config, _ = get_experiment("crnn_mjsynth")
  spec = data_config.resolve(config.data)
  assert spec.info.name == "mjsynth" and spec.image_shape == (32, 100, 1)
  assert "".join(spec.info.class_names) == "0123456789abcdefghijklmnopqrstuvwxyz"
  assert config.optim.name == "adadelta" and config.optim.rho == 0.9 and config.task == "sequence"


@pytest.mark.slow
def test_crnn_mjsynth_is_the_paper_network():
  config, _ = get_experiment("crnn_mjsynth")
  spec = data_config.resolve(config.data)
  model = create_model(config.model.name, **model_kwargs(config.model, config.train,
                                                          num_classes=spec.info.num_classes))
  x = jax.ShapeDtypeStruct((2,) + spec.image_shape, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 26, 37)
  assert param_count(variables["params"]) == 8_326_693
  assert config.optim.name == "adadelta" and config.optim.rho == 0.9 and config.optim.lr == 1.0
  tx = make_optimizer(config.optim, make_schedule(config.optim, config.train.steps))
  tx.init(variables["params"])   # abstract params are enough for the structure
  assert config.task == "sequence"


def test_crnn_digits_resolves():
  config, _ = get_experiment("crnn_digits")
  spec = data_config.resolve(config.data)
  assert spec.info.name == "digit_strings" and spec.image_shape == (32, 128, 1)
  assert config.train.log_every <= 10
