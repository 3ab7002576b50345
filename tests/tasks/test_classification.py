"""Classification task pieces: Mixup / CutMix on device."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn.tasks.classification import mix_batch


def _cfg(**kw):
  return ml_collections.ConfigDict({**dict(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_prob=0.5, mix_prob=1.0), **kw})


def _batch():
  images = jnp.stack([jnp.full((8, 8, 3), float(i)) for i in range(4)])
  labels = jax.nn.one_hot(jnp.arange(4), 4)
  return images, labels


def test_off_is_identity():
  images, labels = _batch()
  out_images, out_labels = mix_batch(jax.random.key(0), images, labels, _cfg())
  assert out_images is images and out_labels is labels


def test_mixup_mixes_images_and_labels_with_the_same_ratio():
  images, labels = _batch()
  out_images, out_labels = mix_batch(jax.random.key(1), images, labels, _cfg(mixup_alpha=0.4))
  lam = float(out_labels[1, 1])  # image 1 mixed with its neighbour, image 0
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(out_labels[1, 0], 1 - lam, rtol=1e-5)
  np.testing.assert_allclose(out_images[1], lam * 1.0 + (1 - lam) * 0.0, rtol=1e-5)
  np.testing.assert_allclose(out_labels.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_label_ratio_is_the_kept_area():
  images, labels = _batch()
  for seed in range(5):
    out_images, out_labels = mix_batch(jax.random.key(seed), images, labels, _cfg(cutmix_alpha=1.0))
    pasted = np.mean(np.asarray(out_images[2, :, :, 0]) == 1.0)  # pixels taken from image 1
    kept = np.mean(np.asarray(out_images[2, :, :, 0]) == 2.0)
    np.testing.assert_allclose(pasted + kept, 1.0)
    np.testing.assert_allclose(out_labels[2, 2], kept, atol=1e-6)
    np.testing.assert_allclose(out_labels[2, 1], pasted, atol=1e-6)


def test_loss_option_is_checked():
  import pytest
  from experiments.configs.common import base_config
  from jaxcnn.data import dataset_info
  from jaxcnn.errors import UserError
  from jaxcnn.tasks.classification import Classification
  c = base_config()
  c.model.name, c.train.loss = "lenet5", "hinge"
  with pytest.raises(UserError, match="train.loss"):
    Classification(c, dataset_info("digits"))
  c.train.loss, c.train.label_smoothing = "rbf_map", 0.1
  with pytest.raises(UserError, match="hard labels"):
    Classification(c, dataset_info("digits"))
