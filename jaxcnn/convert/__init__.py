"""Weight import: PyTorch (torchvision / timm) state dicts -> this project's flax variables.

Each family registers a converter in its own module here (`jaxcnn/convert/<family>.py`):

    @register_converter("resnet")          # handles every model name starting with "resnet"
    def convert_resnet(name, state_dict):  # state_dict: {torch_name: np.ndarray}
      return {"params": ..., "batch_stats": ...}

`torch_to_flax(name, state_dict)` picks the converter with the longest matching prefix.
Loading never executes code from the file: see `load_torch_state_dict`.
"""
import importlib
import os
import pickle
import pkgutil
import warnings
from typing import Callable, Dict

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

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
  """{name: array} from a .safetensors or a torch .pth/.pt file, without executing code from it.

  Every failure is a one-line UserError naming the path and the cause: a missing,
  unreadable or directory path, a damaged or truncated file, a pickle holding
  objects other than tensors (refused: unpickling it could execute code), a file
  holding no state dict of tensors.
  """
  path = str(path)
  if not os.path.exists(path):
    raise UserError(f"weights file {path}: no such file or directory")
  if os.path.isdir(path):
    raise UserError(f"weights file {path}: is a directory, not a weights file")
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    raise UserError(f"weights file {path}: cannot be read: {e.strerror or e}") from None
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      return load_file(path)
    except Exception as e:  # SafetensorError (Rust) for damaged headers, OSError for I/O
      cause = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise UserError(f"weights file {path}: damaged, truncated or not a safetensors file ({cause})") from None
  try:
    import torch
  except ImportError:
    raise UserError(f"reading {path} needs torch (pip install torch) or a .safetensors file") from None
  try:
    with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: the refusal says it all
      warnings.simplefilter("ignore")
      sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for damaged files (KeyError, RuntimeError, EOFError, ...)
    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
      # torch's own message advises weights_only=False, i.e. running the file's code: never repeat it.
      raise UserError(f"weights file {path}: refused, it is a pickle of objects other than tensors and loading "
                      "it could execute code; expected a .safetensors file or a plain state dict "
                      "(torch.save(model.state_dict(), path))") from None
    if "TorchScript" in str(e):  # e.g. OpenAI's original CLIP .pt files: a program, not a state dict
      cause = ("a TorchScript archive (a program, not a state dict; loading it would run its code): use a "
               "state dict of the same weights, e.g. open_clip's .safetensors / .bin")
    elif head.startswith(b"PK"):
      cause = f"a damaged or truncated torch zip archive ({str(e).split('. ')[0].splitlines()[0]})"
    elif head.startswith(b"\x80"):
      cause = f"a damaged legacy torch file ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
    else:
      cause = "not a torch (.pth/.pt) or .safetensors weights file"
    raise UserError(f"weights file {path}: {cause}") from None
  if isinstance(sd, dict):
    sd = sd.get("state_dict", sd.get("model", sd))
  if not isinstance(sd, dict):
    raise UserError(f"weights file {path}: holds a {type(sd).__name__}, not a state dict of tensors")
  for key, value in sd.items():
    if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
      raise UserError(f"weights file {path}: entry '{key}' is a {type(value).__name__}, not a tensor; "
                      "expected a state dict of tensors")
  return sd


def check_weights(variables: dict, source: str) -> dict:
  """`variables` ({'params': ..., 'batch_stats': ...}) unchanged if every array is usable; else a UserError.

  Parameters and BatchNorm statistics must be floating point (an integer or boolean
  kernel would be silently cast and trained on) and finite (NaN/Inf weights would
  only show up later as a diverged run). Other collections are checked for
  finiteness where they are floating point. `source` names the file in the message.
  """
  for collection, tree in variables.items():
    if not isinstance(tree, dict):
      continue
    for key, value in traverse_util.flatten_dict(tree, sep="/").items():
      array = np.asarray(value)
      name = f"{collection}/{key}"
      if not jnp.issubdtype(array.dtype, jnp.floating):
        if collection in ("params", "batch_stats"):
          raise UserError(f"weights {source}: array '{name}' has dtype {array.dtype}; "
                          "parameters must be floating point")
        continue
      bad = array.size - int(np.count_nonzero(np.isfinite(array)))
      if bad:
        raise UserError(f"weights {source}: array '{name}' has {bad} non-finite value(s) (NaN or Inf)")
  return variables


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
