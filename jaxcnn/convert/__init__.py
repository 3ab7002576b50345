"""Weight import: PyTorch (torchvision / timm) state dicts -> this project's flax variables.

Each family registers a converter in its own module here (`jaxcnn/convert/<family>.py`):

    @register_converter("resnet")          # handles every model name starting with "resnet"
    def convert_resnet(name, state_dict):  # state_dict: {torch_name: np.ndarray}
      return {"params": ..., "batch_stats": ...}

`torch_to_flax(name, state_dict)` picks the converter with the longest matching prefix.
Loading never executes code from the file: see `load_torch_state_dict`.
"""
import importlib
import pkgutil
from typing import Callable, Dict

import numpy as np

from jaxcnn.errors import UserError, unknown

_CONVERTERS: Dict[str, Callable] = {}


def register_converter(prefix: str):
  def wrap(fn):
    _CONVERTERS[prefix] = fn
    return fn
  return wrap


def torch_to_flax(name: str, state_dict) -> dict:
  """Maps a torchvision/timm state dict for model `name` to flax variables (numpy arrays)."""
  _import_converters()
  matches = [p for p in _CONVERTERS if name.startswith(p)]
  if not matches:
    raise unknown("weight converter for model", name, _CONVERTERS)
  sd = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  return _CONVERTERS[max(matches, key=len)](name, sd)


def load_torch_state_dict(path: str) -> dict:
  """Reads a .safetensors or a torch .pth/.pt file without executing code from it."""
  path = str(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return load_file(path)
  try:
    import torch
  except ImportError as e:
    raise UserError(f"reading {path} needs torch (pip install torch) or a .safetensors file") from e
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for bad files
    raise UserError(f"could not read weights from {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
  return sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd


# Layout helpers shared by the family converters.
def conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch OIHW -> flax HWIO (grouped convs keep I = in_channels / groups in both)."""
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear (out, in) -> flax Dense (in, out)."""
  return np.transpose(w)


def batchnorm(sd: dict, prefix: str):
  """(params, batch_stats) of one torch BatchNorm at `prefix` ('' allowed)."""
  p = f"{prefix}." if prefix else ""
  return ({"scale": sd[p + "weight"], "bias": sd[p + "bias"]},
          {"mean": sd[p + "running_mean"], "var": sd[p + "running_var"]})


def _to_numpy(v):
  if isinstance(v, np.ndarray):
    return v
  return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def _import_converters():
  for info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{info.name}")
