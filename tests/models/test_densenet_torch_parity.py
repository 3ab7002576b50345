"""jaxcnn DenseNets with converted torchvision weights compute torchvision's logits (eval, 32x32, batch 2)."""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, randomize_constants_, torchvision_model  # noqa: E402

SLOW = ["densenet161", "densenet169", "densenet201"]  # the same layers, more of them


@pytest.mark.parametrize("name", ["densenet121"] + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_logits_match_torchvision(name):
  diff, scale = compare_logits(name, torchvision_model(name), size=32)
  print(f"{name}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


@pytest.mark.slow
def test_densenet264_uses_the_same_layout():
  torch.manual_seed(0)
  model = randomize_constants_(torchvision.models.densenet.DenseNet(32, (6, 12, 64, 48), 64)).eval()
  diff, scale = compare_logits("densenet264", model, size=32)
  assert scale > 1e-2 and diff < 1e-4


def test_old_key_names_fine_tuned_head_and_wrong_layout():
  state_dict = torchvision_model("densenet121", num_classes=5).state_dict()
  old = {key.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for key, v in state_dict.items()}
  variables = torch_to_flax("densenet121", old)
  assert variables["params"]["classifier"]["kernel"].shape == (1024, 5)
  assert variables["batch_stats"]["denseblock4"]["denselayer16"]["norm2"]["mean"].shape == (128,)
  with pytest.raises(UserError, match="does not fit 'densenet169'"):
    torch_to_flax("densenet169", state_dict)
  with pytest.raises(UserError, match="no torchvision weights layout for 'densenet_bc_100_12'"):
    torch_to_flax("densenet_bc_100_12", state_dict)
