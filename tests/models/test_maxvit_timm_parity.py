"""MaxViT with converted timm `maxvit_tiny_tf_224` weights computes timm's logits.

Random timm weights, with BatchNorm / LayerNorm affine parameters, running
statistics and relative position tables randomised (constants would hide a
mis-mapped tensor), eval mode, batch 2 at 224x224, |difference| < 1e-4.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402


def randomized(model, seed=0):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):
        p.uniform_(0.5, 1.5, generator=generator)
      elif p.ndim == 1 or name.endswith("relative_position_bias_table"):
        p.normal_(0.0, 0.1, generator=generator)
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.1, generator=generator)
        m.running_var.uniform_(0.5, 1.5, generator=generator)
  return model.eval()


@pytest.fixture(scope="module")
def timm_tiny():
  torch.manual_seed(0)
  return randomized(timm.create_model("maxvit_tiny_tf_224", pretrained=False))


def test_maxvit_tiny_matches_timm(timm_tiny):
  images = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    expected = timm_tiny(torch.from_numpy(images)).numpy()
  variables = torch_to_flax("maxvit_tiny", timm_tiny.state_dict())
  logits = np.asarray(jax.jit(create_model("maxvit_tiny").apply)(variables, images.transpose(0, 2, 3, 1)))
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_other_sizes_convert_to_the_model_shapes():
  """maxvit_small_tf_384 (window 12, 5 classes) fits maxvit_small's shapes; shapes only."""
  model = timm.create_model("maxvit_small_tf_384", pretrained=False, num_classes=5, device="meta")
  sd = {k: np.zeros(v.shape, np.float16) for k, v in model.state_dict().items()}
  variables = torch_to_flax("maxvit_small", sd)
  assert variables["params"]["head"]["kernel"].shape == (768, 5)
  assert variables["params"]["stages_0_0"]["attn_block"]["rel_pos"]["relative_position_bias_table"].shape == (3, 23, 23)


def test_wrong_architecture_is_refused(timm_tiny):
  with pytest.raises(UserError, match="does not fit 'maxvit_small'"):
    torch_to_flax("maxvit_small", timm_tiny.state_dict())
  with pytest.raises(UserError, match="not a timm maxvit"):
    torch_to_flax("maxvit_tiny", {"fc.weight": np.zeros((2, 2))})
