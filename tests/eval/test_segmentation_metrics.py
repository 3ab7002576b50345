"""Confusion matrix and segmentation metrics against NumPy and scikit-learn; overlay pictures."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from jaxcnn.eval.segmentation import (confusion_matrix, metrics_from_confusion, overlay, palette,
                                      per_class_iou, save_overlay_grid)


def random_batch(rng, shape=(3, 17, 23), k=6, ignore=255, absent=(4,)):
  """Labels with ~15% ignore pixels and classes in `absent` never labelled (one of them predicted)."""
  labels = rng.integers(0, k, shape)
  for c in absent:
    labels[labels == c] = 0
  labels[rng.random(shape) < 0.15] = ignore
  preds = np.where(rng.random(shape) < 0.6, np.where(labels == ignore, 0, labels), rng.integers(0, k, shape))
  preds[preds == 5] = 1  # class 5: labelled, never predicted
  return labels, preds


def numpy_confusion(labels, preds, k, ignore=255):
  cm = np.zeros((k, k), np.int64)
  for t, p in zip(labels.ravel(), preds.ravel()):
    if t != ignore:
      cm[t, p] += 1
  return cm


def test_confusion_matrix_matches_numpy_and_sklearn():
  labels, preds = random_batch(np.random.default_rng(0))
  cm = jax.jit(confusion_matrix, static_argnums=2)(labels, preds, 6)
  assert cm.dtype == jnp.int32 and cm.shape == (6, 6)
  np.testing.assert_array_equal(cm, numpy_confusion(labels, preds, 6))
  keep = labels.ravel() != 255
  np.testing.assert_array_equal(cm, sk_confusion_matrix(labels.ravel()[keep], preds.ravel()[keep],
                                                        labels=list(range(6))))


def test_weights_drop_padding_examples_and_pixels():
  labels, preds = random_batch(np.random.default_rng(1))
  cm = confusion_matrix(labels, preds, 6, weights=np.array([1, 0, 1]))  # example 1 is eval padding
  np.testing.assert_array_equal(cm, numpy_confusion(labels[[0, 2]], preds[[0, 2]], 6))
  pixel_w = (np.random.default_rng(2).random(labels.shape) < 0.5).astype(np.float32)
  cm = confusion_matrix(labels, preds, 6, weights=pixel_w)
  np.testing.assert_array_equal(cm, numpy_confusion(np.where(pixel_w > 0, labels, 255), preds, 6))
  weighted = confusion_matrix(labels, preds, 6, weights=2.0 * pixel_w, dtype=jnp.float32)
  np.testing.assert_allclose(weighted, 2.0 * np.asarray(cm), rtol=0)


def test_labels_and_predictions_outside_the_classes_do_not_count():
  labels = np.array([[0, 1, 7, 255, -1]])
  preds = np.array([[0, 9, 1, 1, 1]])
  np.testing.assert_array_equal(confusion_matrix(labels, preds, 3), [[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_metrics_match_sklearn_and_a_reference():
  labels, preds = random_batch(np.random.default_rng(3), shape=(4, 31, 29), k=6)
  cm = np.asarray(confusion_matrix(labels, preds, 6))
  m = metrics_from_confusion(cm, class_names=["bg", "a", "b", "c", "d", "e"])
  t, p = labels.ravel(), preds.ravel()
  t, p = t[t != 255], p[t != 255]
  present = sorted(set(t) | set(p))
  assert 4 in present and 4 not in set(t)  # predicted but never labelled: counts with IoU 0
  assert m["iou/d"] == 0.0
  np.testing.assert_allclose(m["miou"], jaccard_score(t, p, average="macro", labels=present), rtol=1e-12)
  per_class = jaccard_score(t, p, average=None, labels=present)
  np.testing.assert_allclose([m[f"iou/{n}"] for n in ("bg", "a", "b", "c", "d", "e")], per_class, rtol=1e-12)
  np.testing.assert_allclose(m["pixel_accuracy"], np.mean(t == p), rtol=1e-12)
  recalls = [np.mean(p[t == c] == c) for c in sorted(set(t))]
  np.testing.assert_allclose(m["mean_class_accuracy"], np.mean(recalls), rtol=1e-12)
  assert "foreground_dice" not in m


def test_absent_classes_are_left_out_of_the_mean():
  cm = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 neither labelled nor predicted
  iou = per_class_iou(cm)
  assert np.isnan(iou[2])
  m = metrics_from_confusion(cm)
  np.testing.assert_allclose(m["miou"], (5 / 8 + 4 / 7) / 2)
  assert "iou/2" not in m and set(m) >= {"iou/0", "iou/1"}


def test_binary_foreground_dice_and_iou():
  rng = np.random.default_rng(4)
  labels = (rng.random((2, 20, 20)) < 0.3).astype(np.int32)
  preds = np.where(rng.random(labels.shape) < 0.8, labels, 1 - labels)
  m = metrics_from_confusion(confusion_matrix(labels, preds, 2))
  inter, lab, pred = np.sum((labels == 1) & (preds == 1)), np.sum(labels == 1), np.sum(preds == 1)
  np.testing.assert_allclose(m["foreground_dice"], 2 * inter / (lab + pred), rtol=1e-12)
  np.testing.assert_allclose(m["foreground_iou"], inter / (lab + pred - inter), rtol=1e-12)
  np.testing.assert_allclose(m["foreground_iou"], jaccard_score(labels.ravel(), preds.ravel()), rtol=1e-12)


def test_empty_matrix_gives_nan_not_an_error():
  m = metrics_from_confusion(np.zeros((3, 3), np.int32))
  assert np.isnan(m["miou"]) and np.isnan(m["pixel_accuracy"])


def test_voc_palette():
  p = palette()
  np.testing.assert_array_equal(p[[0, 1, 2, 3, 15, 20, 255]],
                                [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [192, 128, 128],
                                 [0, 64, 128], [224, 224, 192]])
  assert len({tuple(c) for c in p[:21]}) == 21


def test_overlay_blends_class_colours_and_marks_ignore():
  images = np.full((1, 2, 3, 3), 100, np.uint8)
  masks = np.array([[[0, 1, 2], [255, 1, 0]]])
  out = overlay(images, masks, num_classes=3, alpha=0.5)
  assert out.dtype == np.uint8 and out.shape == (1, 2, 3, 3)
  np.testing.assert_array_equal(out[0, 0, 0], [100, 100, 100])  # background left as is
  np.testing.assert_array_equal(out[0, 0, 1], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
  np.testing.assert_array_equal(out[0, 1, 0], [162, 162, 146])  # ignore colour (224, 224, 192)
  painted = overlay(images, masks, num_classes=3, alpha=1.0, background=None)
  np.testing.assert_array_equal(painted[0, 0, 0], [0, 0, 0])


def test_save_overlay_grid_writes_a_png(tmp_path):
  rng = np.random.default_rng(5)
  images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)  # normalised floats
  preds, truth = rng.integers(0, 4, (3, 16, 16)), rng.integers(0, 4, (3, 16, 16))
  path = save_overlay_grid(str(tmp_path / "plots" / "seg.png"), images, preds, truth, num_classes=4)
  picture = np.asarray(Image.open(path))
  # 2 rows of 3 cells, each enlarged to 96x96, with 2-pixel padding
  assert picture.shape == (2 * 98 + 2, 3 * 98 + 2, 3)
  with pytest.raises(ValueError, match="do not match"):
    overlay(images, preds[:, :8], 4)
