"""CUB-200-2011 birds with the char-CNN-RNN text embeddings of Reed et al. 2016, laid out as StackGAN uses them.

Registered as dataset `cub_stackgan` (splits 'train', 'test'); point
`data.data_dir` at one folder (the StackGAN `data/birds` layout) holding:

    CUB_200_2011/images/<class>/<name>.jpg     the CUB-200-2011 images (11,788; those the splits name must exist)
    CUB_200_2011/images.txt                    "<id> <class>/<name>.jpg" per image
    CUB_200_2011/bounding_boxes.txt            "<id> <x> <y> <width> <height>" per image
    train/filenames.pickle                     ["<class>/<name>", ...] (8,855 images)
    train/char-CNN-RNN-embeddings.pickle       [8,855, 10, 1024]: 10 caption embeddings per image
    test/filenames.pickle                      (2,933 images)
    test/char-CNN-RNN-embeddings.pickle        [2,933, 10, 1024]

`{train,test}/class_info.pickle` of the same download may be there too; it is
not read (the class is the number of the image's class folder, the same 1..200
numbering, counted here from 0).

Sources: the images from Caltech (https://www.vision.caltech.edu/datasets/cub_200_2011/,
CUB_200_2011.tgz, unpacked into the folder); the embeddings are the preprocessed
"char-CNN-RNN text embeddings for birds" linked from the StackGAN READMEs
(hanzhang/StackGAN, hanzhanggit/StackGAN-Pytorch: birds.zip holds train/ and
test/ above), computed with the text encoder of Reed et al., "Learning Deep
Representations of Fine-Grained Visual Descriptions" (CVPR 2016,
github.com/reedscot/cvpr2016). The pickles were written by Python 2 and are
read with latin-1 decoding.

An example is {'image': uint8 [H, W, 3], 'label': class 0..199, 'embedding':
float32 [10, 1024]} (the pipeline passes `embedding` through to the batches).
As in the authors' code, the bounding box is read as integers and each image is
cropped to a square of side 1.5 x the longer side of its box, centred on the
box centre and clipped at the image border; the pipeline then resizes it
(bilinear) to `data.image_size` (0 = 64, Stage I's size), or, with the
authors' augmentation `data.augment='scale_crop,flip'`, to 76/64 of it with a
random crop back and a random flip. The StackGAN task draws one of the 10
caption embeddings per image and step, as the authors' PyTorch code does, and
pairs real images with another image's embedding for the matching-aware
discriminator loss.
"""
import os
import pickle
from typing import Dict, List, Tuple

import numpy as np

from jaxcnn.data import sources
from jaxcnn.errors import UserError

NAME = "cub_stackgan"
EMBEDDING_DIM = 1024
CAPTIONS_PER_IMAGE = 10
NUM_CLASSES = 200
EMBEDDING_FILE = "char-CNN-RNN-embeddings.pickle"
LAYOUT = ("CUB_200_2011/{images/, images.txt, bounding_boxes.txt} and "
          "{train,test}/{filenames.pickle, " + EMBEDDING_FILE + "}")


def expected_files(root: str, split: str) -> List[str]:
  return [os.path.join(root, "CUB_200_2011", "images") + os.sep,
          os.path.join(root, "CUB_200_2011", "images.txt"),
          os.path.join(root, "CUB_200_2011", "bounding_boxes.txt"),
          os.path.join(root, split, "filenames.pickle"),
          os.path.join(root, split, EMBEDDING_FILE)]


def check_layout(root: str, split: str) -> None:
  """UserError naming every missing file (and where the files come from)."""
  missing = [p for p in expected_files(root, split) if not os.path.exists(p)]
  if missing:
    raise UserError(f"CUB/StackGAN data incomplete under data.data_dir='{root}': missing {', '.join(missing)} "
                    f"(expected {LAYOUT}: the Caltech CUB_200_2011.tgz unpacked there plus the StackGAN birds.zip "
                    f"embeddings; see jaxcnn/data/embeddings.py)")


def _load_pickle(path):
  with open(path, "rb") as f:
    return pickle.load(f, encoding="latin1")


def load_image_paths(root: str) -> Dict[str, str]:
  """'<class>/<name>' -> '<class>/<name>.<ext>' from CUB's images.txt, in its order."""
  paths = {}
  with open(os.path.join(root, "CUB_200_2011", "images.txt")) as f:
    for line in f:
      if line.strip():
        _, path = line.split()
        paths[os.path.splitext(path)[0]] = path
  return paths


def load_bounding_boxes(root: str) -> Dict[str, Tuple[int, int, int, int]]:
  """'<class>/<name>' -> (x, y, width, height) from CUB's images.txt and bounding_boxes.txt.

  Truncated to integers, as the authors' code reads them.
  """
  names = {}
  with open(os.path.join(root, "CUB_200_2011", "images.txt")) as f:
    for line in f:
      if line.strip():
        image_id, path = line.split()
        names[image_id] = os.path.splitext(path)[0]
  boxes = {}
  with open(os.path.join(root, "CUB_200_2011", "bounding_boxes.txt")) as f:
    for line in f:
      if line.strip():
        image_id, *box = line.split()
        if image_id in names:
          boxes[names[image_id]] = tuple(int(float(v)) for v in box)
  return boxes


def crop_box(width: int, height: int, box) -> Tuple[int, int, int, int]:
  """StackGAN's crop: a square of half-side 0.75 x max(w, h) centred on the box, clipped to the image."""
  x, y, w, h = box
  r = int(max(w, h) * 0.75)
  cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
  return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def class_of(key: str) -> int:
  """'017.Cardinal/Cardinal_0001_17057' -> 16 (CUB class folders are numbered from 001)."""
  return int(key.split("/")[0].split(".")[0]) - 1


class CubEmbeddingSource:
  """Random access to one split: {'image': uint8 [H, W, 3], 'label': int, 'embedding': float32 [10, 1024]}.

  Every file the split needs (pickles, box table, each named image) is checked
  when the source is opened, so a missing file is a UserError naming it rather
  than a failure deep inside a reader thread.
  """

  def __init__(self, root: str, split: str, crop: bool = True):
    if split not in ("train", "test"):
      raise UserError(f"CUB/StackGAN split must be 'train' or 'test', got '{split}'")
    check_layout(root, split)
    self.root, self.split, self.crop = root, split, crop
    self.keys = [str(k) for k in _load_pickle(os.path.join(root, split, "filenames.pickle"))]
    embeddings = np.asarray(_load_pickle(os.path.join(root, split, EMBEDDING_FILE)), np.float32)
    if embeddings.ndim == 2:  # one embedding per image
      embeddings = embeddings[:, None, :]
    if embeddings.ndim != 3 or len(embeddings) != len(self.keys):
      raise UserError(f"{os.path.join(root, split, EMBEDDING_FILE)} holds an array of shape {embeddings.shape}; "
                      f"expected [{len(self.keys)}, captions, dim] to match filenames.pickle")
    self.embeddings = embeddings
    self.embeddings.setflags(write=False)   # shared by the reader threads
    self.labels = np.asarray([class_of(k) for k in self.keys], np.int64)
    known = load_image_paths(root)
    self.paths = [os.path.join(root, "CUB_200_2011", "images", known.get(k, k + ".jpg")) for k in self.keys]
    self._check_images()
    self.boxes = load_bounding_boxes(root) if crop else {}
    no_box = [k for k in self.keys if crop and k not in self.boxes]
    if no_box:
      raise UserError(f"{len(no_box)} image(s) of '{split}' have no bounding box in "
                      f"{os.path.join(root, 'CUB_200_2011', 'bounding_boxes.txt')} (first: {no_box[0]}); "
                      f"use the images.txt and bounding_boxes.txt of CUB_200_2011.tgz")

  @property
  def extra_fields(self):
    return {"embedding": (self.embeddings.shape[1:], np.float32)}

  def _check_images(self):
    missing = [p for p in self.paths if not os.path.exists(p)]
    if missing:
      raise UserError(f"{len(missing)} of the {len(self.paths)} images named by "
                      f"{os.path.join(self.root, self.split, 'filenames.pickle')} are missing (first: {missing[0]}); "
                      f"unpack CUB_200_2011.tgz into data.data_dir='{self.root}'")

  def __len__(self) -> int:
    return len(self.keys)

  def image(self, index: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    key = self.keys[index]
    with Image.open(self.paths[index]) as im:
      im = im.convert("RGB")
      if self.crop:
        im = im.crop(crop_box(im.width, im.height, self.boxes[key]))
      return np.asarray(im, np.uint8)

  def __getitem__(self, index) -> dict:
    index = int(index)
    return {"image": self.image(index), "label": int(self.labels[index]), "embedding": self.embeddings[index]}

  def __repr__(self) -> str:
    return f"CubEmbeddingSource({self.root!r}, {self.split!r}, {len(self)} images)"


def open_split(split: str, data_dir: str) -> CubEmbeddingSource:
  """`register_source` hook: the split of the birds folder `data.data_dir`."""
  if not data_dir:
    raise UserError(f"dataset '{NAME}' reads files you provide: set data.data_dir to the StackGAN birds folder "
                    f"holding {LAYOUT} (see jaxcnn/data/embeddings.py)")
  return CubEmbeddingSource(data_dir, split)


INFO = sources.DatasetInfo(NAME, NUM_CLASSES, (64, 64, 3), False, "train", "test", None)
sources.register_source(INFO, open_split)
