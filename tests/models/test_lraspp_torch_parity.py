"""lraspp_mobilenet_v3_large with converted torchvision weights computes torchvision's 'out' (eval, random
weights and BN statistics, non-square input), for 21 classes and for one (binary segmentation)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import randomize_constants_  # noqa: E402

NAME = "lraspp_mobilenet_v3_large"


def _torchvision_lraspp(**kwargs):
  torch.manual_seed(0)
  model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, **kwargs)
  return randomize_constants_(model).eval()


@pytest.mark.parametrize("num_classes", [21, 1])
def test_out_matches_torchvision(num_classes):
  reference = _torchvision_lraspp(num_classes=num_classes)
  images = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images))
  assert set(expected) == {"out"}
  expected = expected["out"].numpy().transpose(0, 2, 3, 1)
  variables = torch_to_flax(NAME, reference.state_dict())
  result = jax.jit(create_model(NAME, num_classes=num_classes).apply)(variables, images.transpose(0, 2, 3, 1))
  assert set(result) == {"out"}
  assert result["out"].shape == expected.shape == (2, 64, 96, num_classes)
  diff, scale = float(np.max(np.abs(np.asarray(result["out"]) - expected))), float(np.max(np.abs(expected)))
  print(f"{NAME} ({num_classes} classes): max |jax - torch| = {diff:.2e} (max |logit| {scale:.2f})")
  assert scale > 1e-2
  assert diff < 1e-4 * min(1.0, scale)  # 1e-4, and relative to small logits


def test_backbone_weights_are_the_classifiers():
  """torchvision's LRASPP backbone (`backbone.<i>`) converts to the same arrays as its `features.<i>`."""
  reference = _torchvision_lraspp()
  classifier = torchvision.models.mobilenet_v3_large()
  classifier.features.load_state_dict(
      {k[len("backbone."):]: v for k, v in reference.state_dict().items() if k.startswith("backbone.")})
  seg, cls = torch_to_flax(NAME, reference.state_dict()), torch_to_flax("mobilenet_v3_large",
                                                                        classifier.state_dict())
  for collection in ("params", "batch_stats"):
    backbone = {k: v for k, v in cls[collection].items() if k != "classifier"}
    jax.tree.map(np.testing.assert_array_equal, seg[collection]["backbone"], backbone)


def test_wrong_layouts():
  state = _torchvision_lraspp().state_dict()
  narrow = dict(state)  # a 64-channel head: every tensor there, shapes wrong
  narrow["classifier.cbr.0.weight"] = state["classifier.cbr.0.weight"][:64]
  for key in ("weight", "bias", "running_mean", "running_var"):
    narrow[f"classifier.cbr.1.{key}"] = state[f"classifier.cbr.1.{key}"][:64]
  narrow["classifier.scale.1.weight"] = state["classifier.scale.1.weight"][:64]
  narrow["classifier.high_classifier.weight"] = state["classifier.high_classifier.weight"][:, :64]
  with pytest.raises(UserError, match=rf"does not fit '{NAME}': batch_stats/classifier/cbr/bn/mean has shape \(64,\)"):
    torch_to_flax(NAME, narrow)
  with pytest.raises(UserError, match=f"does not fit '{NAME}': it has no 'backbone.0.0.weight'"):
    torch_to_flax(NAME, torchvision.models.mobilenet_v3_large().state_dict())
  with pytest.raises(UserError, match="no torchvision weights layout for 'lraspp_mobilenet_v3_small'"):
    torch_to_flax("lraspp_mobilenet_v3_small", {})
