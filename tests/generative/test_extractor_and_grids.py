"""The FID feature extractor (trained here, cached on disk) and the PNG sample grids."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data import default_data_config
from jaxcnn.eval import extractor as extractor_lib
from jaxcnn.eval import grids


def digits(size=16):
  c = default_data_config()
  c.name = "digits"
  c.image_size = size
  c.normalize = "symmetric"
  return c


def test_extractor_key_spells_out_native_sizes():
  c = digits(size=0)
  assert extractor_lib.extractor_key(c).startswith("digits-8x8x1-symmetric-lenet5_relu")
  assert extractor_lib.extractor_key(digits(16)) != extractor_lib.extractor_key(digits(32))


def test_extractor_trains_caches_and_reloads(tmp_path, monkeypatch):
  monkeypatch.setitem(extractor_lib.RECIPE, "steps", 150)
  monkeypatch.setattr(extractor_lib, "_MEMO", {})
  monkeypatch.setenv("JAXCNN_CACHE", str(tmp_path))
  ex = extractor_lib.get_extractor(digits())
  key = extractor_lib.extractor_key(digits())
  assert os.path.exists(tmp_path / "extractors" / key / "params.msgpack")
  assert ex.test_accuracy > 0.7                      # a real classifier after a few seconds
  assert "digits-16x16x1-symmetric" in ex.name and f"{ex.test_accuracy:.3f}" in ex.name
  images, labels = extractor_lib.split_arrays(digits(), "test")
  logits, features = ex.logits_and_features(images[:50], chunk=20)
  assert logits.shape == (50, 10) and features.shape == (50, 84)
  # A new process (empty memory) reads the same classifier back from disk instead of training.
  monkeypatch.setattr(extractor_lib, "_MEMO", {})
  monkeypatch.setattr(extractor_lib, "train_classifier", lambda *a, **k: pytest.fail("should load from cache"))
  again = extractor_lib.get_extractor(digits())
  np.testing.assert_allclose(again.logits_and_features(images[:50], chunk=20)[0], logits, rtol=1e-6, atol=1e-6)
  assert again.name == ex.name


def test_grid_layout_and_values():
  images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
  g = grids.grid(grids.to_uint8(images, (-1.0, 1.0)), ncol=2, pad=1)
  assert g.shape == (2 * 3 + 1, 2 * 4 + 1, 1)          # 2 rows (2 + 1 padding each) x 2 columns
  assert g[1, 1, 0] == 0 and g[1, 5, 0] == 128 and g[4, 1, 0] == 255
  assert g[0, 0, 0] == 255 and g[4, 5, 0] == 255       # padding and the empty 4th cell are white


def test_save_grid_and_rows_write_pngs(tmp_path):
  rgb = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
  path = grids.save_grid(str(tmp_path / "plots" / "s.png"), rgb, ncol=3, value_range=(0.0, 1.0), min_cell=16)
  im = Image.open(path)
  assert im.mode == "RGB" and im.size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # cells enlarged 2x to 16 px
  grey = rgb[..., :1]
  path = grids.save_rows(str(tmp_path / "r.png"), [grey[:3], grey[3:]], value_range=(0.0, 1.0))
  assert Image.open(path).mode == "L"
