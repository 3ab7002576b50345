"""experiments.run: flags, overrides with type checking, clear errors."""
import os
import subprocess
import sys

import pytest

from experiments import run
from experiments.configs import experiment_names, get_experiment
from jaxcnn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_KEYS = ["model.name", "data.name", "train.steps", "train.batch_size", "train.seed", "optim.name",
                 "optim.lr", "eval.every", "checkpoint.every"]


def test_required_experiments_exist():
  assert {"lenet_digits", "resnet_digits", "vit_digits", "vit_cifar", "resnet18_cifar"} <= set(experiment_names())


EVALUATION_COMMANDS = {"zeroshot_cifar10": "python -m jaxcnn.zeroshot --model=clip_vit_b32"}


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_has_the_common_keys_and_a_docstring(name):
  config, doc = get_experiment(name)
  for key in REQUIRED_KEYS:
    section, leaf = key.split(".")
    assert leaf in config[section], f"{name} lacks {key}"
  # Evaluation-only configs (no training) document the command that evaluates instead.
  command = EVALUATION_COMMANDS.get(name, "python -m experiments.run --exp=" + name)
  assert command in doc


def test_overrides_are_typed():
  config, _ = get_experiment("lenet_digits")
  run.apply_overrides(config, [("train.steps", "7"), ("optim.lr", "0.5"), ("checkpoint.keep_best", "false"),
                               ("optim.step_at", "0.3,0.6"), ("data.augment", "crop")])
  assert config.train.steps == 7 and config.optim.lr == 0.5 and config.checkpoint.keep_best is False
  assert config.optim.step_at == (0.3, 0.6) and config.data.augment == "crop"


def test_model_options_may_be_added():
  config, _ = get_experiment("lenet_digits")
  run.apply_overrides(config, [("model.name", "lenet5_modern"), ("model.num_classes", "10")])
  assert config.model.num_classes == 10


@pytest.mark.parametrize("override,match", [
    (("train.nosuchkey", "1"), "unknown config key 'train.nosuchkey'"),
    (("nosection.steps", "1"), "no section 'nosection'"),
    (("train.steps", "abc"), "train.steps expects an integer"),
    (("checkpoint.keep_best", "maybe"), "expects a bool"),
    (("model.name", "nosuchmodel"), "unknown model"),
    (("model.nosuchoption", "3"), "unknown config key 'model.nosuchoption'"),
    (("model.dtype", "float33"), "model.dtype expects a floating dtype name"),
    (("model.num_classes", "abc"), "model.num_classes expects an integer"),
    (("optim.step_at", "abc"), "optim.step_at expects a comma list of numbers"),
    (("optim.lr", "nan"), "optim.lr expects a number \\(not nan\\)"),
])
def test_bad_overrides(override, match):
  config, _ = get_experiment("lenet_digits")
  with pytest.raises(UserError, match=match):
    run.apply_overrides(config, [override])


def test_bad_flags():
  with pytest.raises(UserError, match="unknown flag --frobnicate"):
    run.parse_args(["--frobnicate=1"])
  with pytest.raises(UserError, match="cannot read argument"):
    run.parse_args(["--exp", "lenet_digits"])
  with pytest.raises(UserError, match="unknown experiment 'nosuchexp'"):
    run.main(["--exp=nosuchexp"])


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env={**os.environ, **(env or {})})


def test_cli_errors_are_one_line_without_traceback(tmp_path):
  out = _cli("--exp=lenet_digits", "--config.train.steps=abc", f"--workdir={tmp_path}")
  assert out.returncode == 2
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == "error: config key train.steps expects an integer, got 'abc'"


def test_cli_lists_experiments():
  out = _cli("--list")
  assert out.returncode == 0 and "lenet_digits" in out.stdout and "vit_cifar" in out.stdout


@pytest.mark.parametrize("key,value", [("optim.lr", "inf"), ("optim.lr", "-inf"), ("optim.grad_clip_norm", "inf")])
def test_non_finite_optimizer_values_are_refused_when_the_config_is_read(key, value):
  from jaxcnn.train.trainer import validate
  config, _ = get_experiment("lenet_digits")
  run.apply_overrides(config, [(key, value)])
  with pytest.raises(UserError, match=f"{key} must be a finite number"):
    validate(config)
