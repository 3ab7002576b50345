"""FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7 against torchvision.ops with random weights.

Odd, non-halving map sizes (15x11, 7x6, 3x2) exercise torch's nearest rule floor(dst * in / out); the
three variants cover no norm + max-pool level, BatchNorm (eval, random statistics) + P6/P7 from C5
(torchvision's use_P5 = in_channels == out_channels is False), GroupNorm(32) + P6/P7 from P5.
Weights go through `jaxcnn.convert.retinanet.fpn`, the converter the detectors use.
"""
import jax
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from jaxcnn.layers.fpn import nearest_indices, upsample_nearest

torch = pytest.importorskip("torch")
ops = pytest.importorskip("torchvision.ops")
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TorchMaxPool  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TorchP6P7  # noqa: E402

IN_CHANNELS = (8, 16, 24)
SHAPES = ((15, 11), (7, 6), (3, 2))


def _randomize(module, generator):
  with torch.no_grad():
    for key, p in module.named_parameters():
      if p.ndim == 1:
        p.uniform_(0.5, 1.5, generator=generator) if "weight" in key else p.normal_(0, 0.3, generator=generator)
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.3, generator=generator)
        m.running_var.uniform_(0.5, 1.5, generator=generator)
  return module.eval()


def _variables(module):
  from jaxcnn.convert import _to_numpy
  from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights
  from jaxcnn.convert.retinanet import fpn
  weights = TorchWeights("fpn", {f"fpn.{k}": _to_numpy(v) for k, v in module.state_dict().items()
                                 if not k.endswith("num_batches_tracked")})
  variables = FlaxVariables()
  fpn(variables, weights, "fpn", ())
  assert not weights.unused()
  return {k: v for k, v in variables.tree.items() if v}


@pytest.mark.parametrize("norm,extra", [(None, "pool"), ("batch", "p6p7_c5"), ("group", "p6p7_p5")])
def test_fpn_matches_torchvision(norm, extra):
  out_channels = 32
  torch_extra = {"pool": TorchMaxPool(), "p6p7_c5": TorchP6P7(IN_CHANNELS[-1], out_channels),
                 "p6p7_p5": TorchP6P7(out_channels, out_channels)}[extra]
  norm_layer = {None: None, "batch": torch.nn.BatchNorm2d, "group": lambda c: torch.nn.GroupNorm(32, c)}[norm]
  torch.manual_seed(0)
  reference = _randomize(ops.FeaturePyramidNetwork(list(IN_CHANNELS), out_channels, torch_extra, norm_layer),
                         torch.Generator().manual_seed(1))
  rng = np.random.default_rng(0)
  maps = [rng.normal(size=(2, c, h, w)).astype(np.float32) for c, (h, w) in zip(IN_CHANNELS, SHAPES)]
  with torch.no_grad():
    expected = list(reference({str(i): torch.from_numpy(m) for i, m in enumerate(maps)}).values())
  jax_extra = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(out_channels, use_p5=extra == "p6p7_p5")
  module = FeaturePyramidNetwork(out_channels, norm=norm, extra_blocks=jax_extra)
  got = module.apply(_variables(reference), [m.transpose(0, 2, 3, 1) for m in maps])
  assert len(got) == len(expected) == 3 + (1 if extra == "pool" else 2)
  for g, e in zip(got, expected):
    e = e.numpy().transpose(0, 2, 3, 1)
    assert g.shape == e.shape
    assert np.max(np.abs(np.asarray(g) - e)) < 1e-4 * max(1.0, np.max(np.abs(e)))


def test_nearest_matches_torch_interpolate():
  x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(1, 1, 5 * 2, 7)[:, :, :5]
  for size in ((13, 9), (10, 14), (6, 7), (11, 20)):
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="nearest").numpy()
    got = upsample_nearest(x.transpose(0, 2, 3, 1), size)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), expected)
  assert list(nearest_indices(3, 5)) == [0, 0, 1, 1, 2]


def test_fpn_bad_options():
  with pytest.raises(UserError, match="norm"):
    FeaturePyramidNetwork(32, norm="layer")
  with pytest.raises(UserError, match="multiple of 32"):
    FeaturePyramidNetwork(48, norm="group")
  init = jax.jit(FeaturePyramidNetwork(16).init)
  with pytest.raises(UserError, match="at least one"):
    init(jax.random.key(0), [])
