"""jaxcnn.explain maps equal pytorch-grad-cam's and captum's on the same converted torchvision ResNet-18.

Random torchvision weights (BN affine parameters and statistics randomised), converted by
jaxcnn.convert; batch 2 at 64x64 (layer4 is 2x2). Maps are compared before any resizing or
normalisation: pytorch-grad-cam's `get_cam_image` (+ its ReLU) at layer4[-1] against `explain.run`
at 'layer4_1'; captum's IntegratedGradients (zero baseline, 50 Gauss-Legendre steps) and
GuidedBackprop against ours. Differences are relative to the reference's largest magnitude.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
captum_attr = pytest.importorskip("captum.attr")

from jaxcnn import create_model, explain  # noqa: E402
from jaxcnn.explain import cam, probe  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from tests.models.torchvision_parity import torchvision_model  # noqa: E402

CLASSES = [3, 7]


@pytest.fixture(scope="module")
def models():
  tmodel = torchvision_model("resnet18")
  images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  return tmodel, torch_to_flax("resnet18", tmodel.state_dict()), images, create_model("resnet18")


def _reference_cam(cls, tmodel, images):
  """pytorch-grad-cam's per-layer map before scale_cam_image (its forward, hooks, weights, ReLU)."""
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  method = cls(tmodel, [tmodel.layer4[-1]])
  captured = {}
  original = method.get_cam_image

  def keep(*args, **kwargs):
    captured["cam"] = np.maximum(original(*args, **kwargs), 0)
    return original(*args, **kwargs)
  method.get_cam_image = keep
  method(torch.from_numpy(images), targets=[ClassifierOutputTarget(c) for c in CLASSES])
  method.activations_and_grads.release()
  return captured["cam"]


def _relative(ours, ref):
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


@pytest.fixture(scope="module")
def layer4(models):
  """Activation and gradient at layer4_1, computed once (one compiled function for the four methods)."""
  _, variables, images, model = models
  fn = jax.jit(lambda v, x: probe.activation_and_grad(model, v, x, explain.Target("class", jnp.asarray(CLASSES)),
                                                      "layer4_1")[:2])
  return fn(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradient_cams_equal_pytorch_grad_cam(models, layer4, method):
  tmodel, _, images, _ = models
  ref = _reference_cam(getattr(pytorch_grad_cam, METHODS[method]), tmodel, images)
  ours = cam.combine(method, *layer4)  # what explain.run(..., method=method, layer='layer4_1') computes
  assert ours.shape == ref.shape == (2, 2, 2)
  assert np.max(ref) > 0
  assert _relative(ours, ref) < 1e-4


@pytest.mark.slow
def test_score_cam_equals_pytorch_grad_cam(models):
  """512 masked forwards per image on both sides (~1 CPU-min)."""
  tmodel, variables, images, model = models
  ref = _reference_cam(pytorch_grad_cam.ScoreCAM, tmodel, images)
  ours = explain.run(model, variables, jnp.asarray(images.transpose(0, 2, 3, 1)),
                     explain.Target("class", jnp.asarray(CLASSES)), method="scorecam", layer="layer4_1")
  assert _relative(ours, ref) < 1e-4


def test_integrated_gradients_equal_captum(models):
  tmodel, variables, images, model = models
  ig = captum_attr.IntegratedGradients(tmodel)
  ref, ref_delta = ig.attribute(torch.from_numpy(images), target=torch.tensor(CLASSES), n_steps=16,
                                return_convergence_delta=True)
  ours, gap = explain.run(model, variables, jnp.asarray(images.transpose(0, 2, 3, 1)),
                          explain.Target("class", jnp.asarray(CLASSES)), method="ig", steps=16)
  ref = ref.detach().numpy().transpose(0, 2, 3, 1)
  assert _relative(ours, ref) < 1e-4
  np.testing.assert_allclose(np.asarray(gap), ref_delta.detach().numpy(), atol=1e-3 * np.abs(ref).sum() / 2)


def test_guided_backprop_equals_captum(models):
  tmodel, variables, images, model = models
  ref = captum_attr.GuidedBackprop(tmodel).attribute(torch.from_numpy(images), target=torch.tensor(CLASSES))
  ours = explain.run(model, variables, jnp.asarray(images.transpose(0, 2, 3, 1)),
                     explain.Target("class", jnp.asarray(CLASSES)), method="guided_backprop")
  ref = ref.detach().numpy().transpose(0, 2, 3, 1)
  assert np.max(np.abs(ref)) > 0
  assert _relative(ours, ref) < 1e-4
