"""Shared machinery of the torchvision converters for AlexNet, VGG, DenseNet, MobileNet, EfficientNet,
ConvNeXt and GoogLeNet.

A converter reads the state dict through `TorchWeights`, which re-lays-out
each layer and remembers which keys it used, and writes flax variables with
`FlaxVariables.put`. `finish` then insists that every torch key was used and
that the result has exactly the variable shapes of `create_model(name)`, so a
state dict of another architecture fails with a UserError naming what
differs instead of loading half a model.
"""
from typing import Dict, Optional, Tuple

import numpy as np

from jaxcnn.convert import conv_kernel, dense_kernel
from jaxcnn.errors import UserError


class TorchWeights:
  """A torchvision state dict ({key: ndarray}) read layer by layer, in flax layouts."""

  def __init__(self, name: str, state_dict: Dict[str, np.ndarray]):
    self.name, self.state_dict, self.used = name, state_dict, set()

  def has(self, key: str) -> bool:
    return key in self.state_dict

  def take(self, key: str) -> np.ndarray:
    if key not in self.state_dict:
      raise UserError(f"the state dict does not fit '{self.name}': it has no '{key}'")
    self.used.add(key)
    return np.asarray(self.state_dict[key], np.float32)

  def conv(self, prefix: str) -> dict:
    """Conv2d -> {'kernel' (HWIO), 'bias' if it has one}."""
    params = {"kernel": conv_kernel(self.take(f"{prefix}.weight"))}
    if self.has(f"{prefix}.bias"):
      params["bias"] = self.take(f"{prefix}.bias")
    return params

  def dense(self, prefix: str, chw: Optional[Tuple[int, int, int]] = None) -> dict:
    """Linear -> {'kernel' (in, out), 'bias'}.

    `chw`: the layer reads a flattened (C, H, W) map. torch flattens NCHW as
    c*H*W + h*W + w, flax flattens NHWC as h*W*C + w*C + c, so the input rows
    are reordered.
    """
    weight = self.take(f"{prefix}.weight")
    if chw is not None:
      c, h, w = chw
      weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return {"kernel": dense_kernel(weight), "bias": self.take(f"{prefix}.bias")}

  def batch_norm(self, prefix: str) -> Tuple[dict, dict]:
    """BatchNorm2d -> ({'scale', 'bias'}, {'mean', 'var'})."""
    return ({"scale": self.take(f"{prefix}.weight"), "bias": self.take(f"{prefix}.bias")},
            {"mean": self.take(f"{prefix}.running_mean"), "var": self.take(f"{prefix}.running_var")})

  def layer_norm(self, prefix: str) -> dict:
    return {"scale": self.take(f"{prefix}.weight"), "bias": self.take(f"{prefix}.bias")}

  def unused(self):
    return sorted(set(self.state_dict) - self.used)


class FlaxVariables:
  """Nested {'params': ..., 'batch_stats': ...} built by path."""

  def __init__(self):
    self.tree = {"params": {}, "batch_stats": {}}

  def put(self, path: Tuple[str, ...], params: Optional[dict] = None, stats: Optional[dict] = None):
    for collection, leaves in (("params", params), ("batch_stats", stats)):
      if leaves:
        node = self.tree[collection]
        for key in path:
          node = node.setdefault(key, {})
        node.update(leaves)

  def conv_bn(self, path: Tuple[str, ...], weights: TorchWeights, conv: str, bn: str):
    """A `layers.ConvBNAct` at `path` from torch modules `conv` and `bn`."""
    self.put(path + ("conv",), weights.conv(conv))
    self.put(path + ("bn",), *weights.batch_norm(bn))


def _shapes(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_shapes(value, f"{prefix}{key}/"))
    else:
      flat[prefix + key] = tuple(value.shape)
  return flat


def finish(name: str, weights: TorchWeights, variables: FlaxVariables, input_size: int = 64,
           **model_kwargs) -> dict:
  """Checks the conversion is complete and fits `create_model(name, **model_kwargs)`; returns the variables."""
  from jaxcnn.registry import create_model
  from jaxcnn.utils import abstract_variables

  unused = weights.unused()
  if unused:
    raise UserError(f"the state dict does not fit '{name}': unexpected {unused[:3]}")
  tree = {k: v for k, v in variables.tree.items() if v}
  model = create_model(name, **model_kwargs)
  expected = abstract_variables(model, (1, input_size, input_size, 3))
  got, want = _shapes(tree), _shapes(dict(expected))
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise UserError(f"the state dict does not fit '{name}': missing {missing[:3]}, unexpected {extra[:3]}")
  for key in sorted(want):
    if got[key] != want[key]:
      raise UserError(f"the state dict does not fit '{name}': {key} has shape {got[key]}, the model needs {want[key]}")
  return tree


def check_name(name: str, convertible):
  if name not in convertible:
    raise UserError(f"no torchvision weights layout for '{name}' (convertible: {', '.join(convertible)})")
