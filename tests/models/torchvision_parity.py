"""Helpers of the `test_*_torch_parity.py` modules: random torchvision models, logits side by side.

Parameters that torchvision initialises to constants (BN and LayerNorm affine
parameters and running statistics, zero biases, ConvNeXt's 1e-6 layer scale)
are randomised, since a constant would hide a mis-mapped tensor.
"""
import jax
import numpy as np
import torch
import torchvision

from jaxcnn import create_model
from jaxcnn.convert import torch_to_flax


def randomize_constants_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_scale"):
        p.uniform_(0.5, 1.5, generator=generator)
      elif p.ndim == 1 and name.endswith("weight"):
        p.uniform_(0.5, 1.5, generator=generator)
      elif p.ndim == 1 and name.endswith("bias"):
        p.normal_(0.0, 0.1, generator=generator)
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.1, generator=generator)
        m.running_var.uniform_(0.5, 1.5, generator=generator)
  return model


def torchvision_model(name: str, **kwargs) -> torch.nn.Module:
  torch.manual_seed(0)
  return randomize_constants_(getattr(torchvision.models, name)(weights=None, **kwargs)).eval()


def compare_logits(name: str, model: torch.nn.Module, size: int, batch: int = 2, **model_kwargs):
  """(max |jax - torch|, max |torch logit|) on one random batch, through `torch_to_flax`."""
  images = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(images)).numpy()
  variables = torch_to_flax(name, model.state_dict())
  logits = jax.jit(create_model(name, **model_kwargs).apply)(variables, images.transpose(0, 2, 3, 1))
  assert logits.shape == expected.shape
  return float(np.max(np.abs(np.asarray(logits) - expected))), float(np.max(np.abs(expected)))
