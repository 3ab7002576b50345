"""Weight files that must be refused in one line: wrong dtypes, non-finite values, pickles, damaged files."""
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from jaxcnn import convert
from jaxcnn.convert import check_weights, load_torch_state_dict
from jaxcnn.errors import UserError
from jaxcnn.train import finetune


def tiny_converter(name, sd):
  return {"params": {"dense": {"kernel": sd["fc.weight"].T, "bias": sd["fc.bias"]}},
          "batch_stats": {"bn": {"mean": sd["bn.running_mean"], "var": sd["bn.running_var"]}}}


@pytest.fixture(autouse=True)
def tiny_net(monkeypatch):
  convert._import_converters()
  monkeypatch.setitem(convert._CONVERTERS, "tiny_test_net", tiny_converter)


def state_dict(**changes):
  sd = {"fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.zeros(3, np.float32),
        "bn.running_mean": np.zeros(2, np.float32), "bn.running_var": np.ones(2, np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64)}  # integer buffers are fine: torch_to_flax drops it
  sd.update(changes)
  return sd


def refusal(path) -> str:
  with pytest.raises(UserError) as e:
    finetune.load_pretrained(str(path), "tiny_test_net")
  message = str(e.value)
  assert "\n" not in message
  return message


def test_a_good_file_loads(tmp_path):
  path = tmp_path / "good.safetensors"
  save_file(state_dict(), str(path))
  variables = finetune.load_pretrained(str(path), "tiny_test_net")
  np.testing.assert_array_equal(variables["params"]["dense"]["kernel"], np.ones((2, 3)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_and_boolean_parameters_are_refused(tmp_path, dtype):
  path = tmp_path / "ints.safetensors"
  save_file(state_dict(**{"fc.weight": np.ones((3, 2), dtype)}), str(path))
  message = refusal(path)
  assert str(path) in message and "params/dense/kernel" in message and np.dtype(dtype).name in message
  assert "floating point" in message


@pytest.mark.parametrize("key,value,array", [
    ("fc.bias", np.array([0.0, np.nan, 1.0], np.float32), "params/dense/bias"),
    ("bn.running_var", np.array([1.0, np.inf], np.float32), "batch_stats/bn/var"),
])
def test_non_finite_weights_are_refused(tmp_path, key, value, array):
  path = tmp_path / "nan.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict(**{key: value}).items()}, path)
  message = refusal(path)
  assert array in message and "non-finite" in message and str(path) in message


def test_check_weights_directly():
  good = {"params": {"a": np.ones(2, np.float32)}, "batch_stats": {}, "other": {"n": np.array(3)}}
  assert check_weights(good, "x") is good  # integers outside params / batch_stats are not parameters
  with pytest.raises(UserError, match="'params/a' has 1 non-finite"):
    check_weights({"params": {"a": np.array([1.0, -np.inf])}}, "x")


class Executable:  # anything beyond tensors makes the file a general pickle
  pass


def test_pickles_are_refused_without_torchs_advice(tmp_path):
  path = tmp_path / "model.pth"
  torch.save({"fc.weight": torch.ones(3, 2), "extra": Executable()}, path)
  message = refusal(path)
  assert "could execute code" in message and "safetensors" in message and str(path) in message
  assert "weights_only" not in message


@pytest.mark.parametrize("content,cause", [
    (lambda good: good[:len(good) // 2], "damaged, truncated or not a safetensors file"),
    (lambda good: b"\x00" * 64, "damaged, truncated or not a safetensors file"),
    (lambda good: b"", "damaged, truncated or not a safetensors file"),
])
def test_damaged_safetensors_are_one_line(tmp_path, content, cause):
  save_file(state_dict(), str(tmp_path / "good.safetensors"))
  path = tmp_path / "bad.safetensors"
  path.write_bytes(content((tmp_path / "good.safetensors").read_bytes()))
  message = refusal(path)
  assert cause in message and str(path) in message


def test_damaged_torch_files_are_one_line(tmp_path):
  good = tmp_path / "good.pth"
  torch.save({"w": torch.ones(1000)}, good)
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(good.read_bytes()[:2000])
  assert "damaged or truncated torch zip archive" in refusal(truncated)
  garbage = tmp_path / "garbage.pt"
  garbage.write_bytes(b"hello, not weights")
  assert "not a torch (.pth/.pt) or .safetensors weights file" in refusal(garbage)


def test_missing_and_unreadable_paths_are_one_line(tmp_path):
  with pytest.raises(UserError, match="no such file or directory"):
    load_torch_state_dict(str(tmp_path / "absent.safetensors"))
  directory = tmp_path / "weights.pth"
  directory.mkdir()
  with pytest.raises(UserError, match="is a directory"):
    load_torch_state_dict(str(directory))
  if os.geteuid() != 0:  # root reads any file
    locked = tmp_path / "locked.safetensors"
    save_file(state_dict(), str(locked))
    locked.chmod(0)
    with pytest.raises(UserError, match="cannot be read: Permission denied"):
      load_torch_state_dict(str(locked))


def test_files_holding_no_state_dict_of_tensors(tmp_path):
  nested = tmp_path / "nested.pth"
  torch.save({"net": {"fc.weight": torch.ones(3, 2)}}, nested)
  assert "entry 'net' is a dict, not a tensor" in refusal(nested)
  a_list = tmp_path / "list.pth"
  torch.save([torch.ones(2)], a_list)
  assert "holds a list, not a state dict" in refusal(a_list)
