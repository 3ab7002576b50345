"""The 'poly' learning-rate schedule against torchvision's segmentation reference (LambdaLR)."""
import ml_collections
import numpy as np
import pytest
import torch

from jaxcnn.errors import UserError
from jaxcnn.train import optim


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(lr=0.02, schedule="poly", warmup_steps=0, end_lr_factor=0.0,
                                     step_at=(0.5, 0.75), step_factor=0.1, poly_power=0.9))
  c.update(kw)
  return c


def torch_lrs(lr, iters, steps, power=0.9, warmup=0):
  """LRs torchvision's references/segmentation/train.py gives at steps 0..steps-1."""
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
  main = torch.optim.lr_scheduler.LambdaLR(opt, lambda x: (1 - x / iters) ** power)
  if warmup:
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-12, total_iters=warmup)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup])
  else:
    sched = main
  out = []
  for _ in range(steps):
    out.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  return np.array(out)


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_poly_matches_torchvision_lambda_lr(power):
  s = optim.make_schedule(_cfg(poly_power=power), total_steps=100)
  got = np.array([float(s(i)) for i in range(100)])
  np.testing.assert_allclose(got, torch_lrs(0.02, 100, 100, power), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(got, 0.02 * (1 - np.arange(100) / 100) ** power, rtol=1e-5, atol=1e-9)
  assert float(s(100)) == 0.0 and float(s(150)) == 0.0


def test_poly_after_warmup_matches_torchvision_sequential_lr():
  s = optim.make_schedule(_cfg(warmup_steps=10), total_steps=110)
  got = np.array([float(s(i)) for i in range(10, 110)])  # torch's LinearLR warmup differs in its first factor
  want = torch_lrs(0.02, 100, 110, warmup=10)[10:]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(float(s(5)), 0.01, rtol=1e-6)


def test_old_configs_without_poly_power_use_09_and_bad_power_is_refused():
  cfg = _cfg()
  del cfg["poly_power"]
  s = optim.make_schedule(cfg, total_steps=10)
  np.testing.assert_allclose(float(s(5)), 0.02 * 0.5 ** 0.9, rtol=1e-6)
  with pytest.raises(UserError, match="optim.poly_power"):
    optim.make_schedule(_cfg(poly_power=0.0), total_steps=10)


def test_end_lr_factor_is_the_floor():
  s = optim.make_schedule(_cfg(end_lr_factor=0.1), total_steps=10)
  np.testing.assert_allclose(float(s(5)), 0.002 + 0.018 * 0.5 ** 0.9, rtol=1e-6)
  np.testing.assert_allclose(float(s(10)), 0.002, rtol=1e-6)
