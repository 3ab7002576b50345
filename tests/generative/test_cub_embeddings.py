"""The CUB/StackGAN source on a miniature copy of the expected file layout."""
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data import embeddings
from jaxcnn.errors import UserError

KEYS = ["001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111",
        "017.Cardinal/Cardinal_0001_17057"]


@pytest.fixture
def birds(tmp_path):
  root = tmp_path / "birds"
  cub = root / "CUB_200_2011"
  lines, boxes = [], []
  for i, key in enumerate(KEYS, start=1):
    (cub / "images" / key.split("/")[0]).mkdir(parents=True)
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :, 0] = np.arange(80)[None, :]          # red = column, green = row: crops are checkable
    image[:, :, 1] = np.arange(60)[:, None]
    Image.fromarray(image).save(cub / "images" / f"{key}.jpg", quality=100)
    lines.append(f"{i} {key}.jpg")
    boxes.append(f"{i} 30.0 20.0 10.0 8.0")            # x, y, w, h: centre (35, 24), half-side 7
  (cub / "images.txt").write_text("\n".join(lines) + "\n")
  (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
  (root / "train").mkdir()
  with open(root / "train" / "filenames.pickle", "wb") as f:
    pickle.dump(KEYS, f, protocol=2)
  emb = np.random.default_rng(0).normal(size=(2, 10, 16)).astype(np.float32)
  with open(root / "train" / embeddings.EMBEDDING_FILE, "wb") as f:
    pickle.dump(emb, f, protocol=2)
  return str(root), emb


def test_source_reads_images_labels_and_embeddings(birds):
  root, emb = birds
  source = embeddings.CubEmbeddingSource(root, "train")
  assert len(source) == 2
  example = source[1]
  assert example["label"] == 16                           # 017.Cardinal, counted from 0
  np.testing.assert_array_equal(example["embedding"], emb[1])
  image = example["image"]
  assert image.dtype == np.uint8 and image.shape == (14, 14, 3)   # the 0.75 x max(w, h) half-side crop
  assert abs(int(image[0, 0, 0]) - 28) <= 2 and abs(int(image[0, 0, 1]) - 17) <= 2  # top-left at (28, 17)
  uncropped = embeddings.CubEmbeddingSource(root, "train", crop=False)[0]["image"]
  assert uncropped.shape == (60, 80, 3)


def test_crop_box_is_clipped_at_the_border():
  assert embeddings.crop_box(100, 50, (0, 0, 40, 20)) == (0, 0, 50, 40)


def test_missing_files_are_named(birds, tmp_path):
  with pytest.raises(UserError, match="test/filenames.pickle"):
    embeddings.CubEmbeddingSource(birds[0], "test")
  with pytest.raises(UserError, match="'train' or 'test'"):
    embeddings.CubEmbeddingSource(birds[0], "val")
