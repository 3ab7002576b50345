"""jaxcnn MobileNetV3 with converted torchvision weights computes torchvision's logits and, dilated, the
'low' / 'high' maps torchvision's segmentation models tap (eval, random weights and BN statistics)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_logits_match_torchvision(name):
  diff, scale = compare_logits(name, torchvision_model(name), size=64)
  print(f"{name}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-1
  assert diff < 1e-4 * scale


@pytest.mark.parametrize("name,low,high", [("mobilenet_v3_large", (4, 40), 960),
                                           ("mobilenet_v3_small", (2, 24), 576)])
def test_dilated_features_match_torchvisions_segmentation_taps(name, low, high):
  """torchvision's segmentation models take `features[stage_indices[-4]]` ('low', output stride 8) and
  the last `features` entry ('high', output stride 16 when dilated); non-square input."""
  block, low_channels = low
  reference = torchvision_model(name, dilated=True)
  images = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
  taps = {}
  with torch.no_grad():
    x = torch.from_numpy(images)
    for i, module in enumerate(reference.features):
      x = module(x)
      taps[i] = x.numpy().transpose(0, 2, 3, 1)
  variables = torch_to_flax(name, reference.state_dict())
  backbone = {k: {n: v for n, v in tree.items() if n != "classifier"} for k, tree in variables.items()}
  model = create_model(name, dilated=True, return_features=True)
  features = jax.jit(model.apply)(backbone, images.transpose(0, 2, 3, 1))
  assert features["low"].shape == (2, 8, 12, low_channels) == taps[block].shape
  assert features["high"].shape == (2, 4, 6, high) == taps[len(taps) - 1].shape
  for key, expected in (("low", taps[block]), ("high", taps[len(taps) - 1])):
    diff = float(np.max(np.abs(np.asarray(features[key]) - expected)))
    print(f"{name} dilated '{key}': max |jax - torch| = {diff:.2e} (max {np.max(np.abs(expected)):.2f})")
    assert diff < 1e-4 * max(1.0, float(np.max(np.abs(expected))))


def test_fine_tuned_head_and_wrong_layouts():
  variables = torch_to_flax("mobilenet_v3_small", torchvision_model("mobilenet_v3_small", num_classes=3).state_dict())
  assert variables["params"]["classifier"]["fc2"]["kernel"].shape == (1024, 3)
  assert variables["params"]["block1"]["se"]["fc1"]["kernel"].shape == (1, 1, 16, 8)
  assert "expand" not in variables["params"]["block1"]
  assert variables["batch_stats"]["last_conv"]["bn"]["mean"].shape == (576,)
  with pytest.raises(UserError, match="does not fit 'mobilenet_v3_small'"):
    torch_to_flax("mobilenet_v3_small", torchvision_model("mobilenet_v3_small", width_mult=0.75).state_dict())
  with pytest.raises(UserError, match="does not fit 'mobilenet_v3_large'"):
    torch_to_flax("mobilenet_v3_large", torchvision_model("mobilenet_v3_small").state_dict())
  with pytest.raises(UserError, match="no torchvision weights layout for 'mobilenet_v3_medium'"):
    torch_to_flax("mobilenet_v3_medium", {})
