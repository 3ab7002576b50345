"""Mask R-CNN's mask branch against torchvision's modules."""
import jax
import numpy as np
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TvHeads
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TvPredictor

from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights
from jaxcnn.convert.mask_rcnn import mask_branch
from jaxcnn.models.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor


def test_mask_head_and_predictor_match_torchvision():
  torch.manual_seed(0)
  channels, classes = 32, 7
  tv_head, tv_pred = TvHeads(channels, (channels,) * 4, 1), TvPredictor(channels, 24, classes)
  with torch.no_grad():
    for p in list(tv_head.parameters()) + list(tv_pred.parameters()):
      if p.ndim == 1:
        p.normal_(0.0, 0.1)  # torchvision zeroes these biases: a mis-mapped one would go unseen
  sd = {f"roi_heads.mask_head.{k}": v.numpy() for k, v in tv_head.state_dict().items()}
  sd.update({f"roi_heads.mask_predictor.{k}": v.numpy() for k, v in tv_pred.state_dict().items()})
  weights, variables = TorchWeights("mask branch", sd), FlaxVariables()
  mask_branch(variables, weights)
  assert not weights.unused()
  params = variables.tree["params"]
  x = np.random.default_rng(0).normal(size=(5, 14, 14, channels)).astype(np.float32)
  with torch.no_grad():
    want = tv_pred(tv_head(torch.from_numpy(x.transpose(0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)
  head, pred = MaskRCNNHeads((channels,) * 4), MaskRCNNPredictor(classes, 24)
  features = jax.jit(head.apply)({"params": params["mask_head"]}, x)
  got = jax.jit(pred.apply)({"params": params["mask_predictor"]}, features)
  assert got.shape == (5, 28, 28, classes)
  np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))
  # the variables the modules create are exactly the converted ones
  shapes = jax.tree.map(np.shape, head.init(jax.random.PRNGKey(0), x)["params"])
  assert shapes == jax.tree.map(np.shape, params["mask_head"])
