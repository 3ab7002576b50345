"""PASCAL VOC 2012 semantic segmentation from the user's own files, registered as dataset `voc2012_seg`.

Point `data.data_dir` at the folder holding `VOCdevkit/` (or at `VOCdevkit/VOC2012` itself):

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg                  the images (17,125; those the lists name must exist)
    VOCdevkit/VOC2012/SegmentationClass/<id>.png           palette PNGs of class indices (2,913)
    VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt     1,464 ids   (split 'train')
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt       1,449 ids   (split 'val', the default eval split)
    VOCdevkit/VOC2012/ImageSets/Segmentation/trainval.txt  2,913 ids   (split 'trainval')
  with the SBD-augmented set (Hariharan et al. 2011, as DeepLab trains on it), for split 'train_aug':
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png        class-index PNGs of the 10,582 augmented images
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt 10,582 ids (one per line; DeepLab's
                                                           "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
                                                           lines are read too)

Sources: VOCtrainval_11-May-2012.tar from the PASCAL VOC site (host.robots.ox.ac.uk/pascal/VOC/voc2012/);
SegmentationClassAug.zip and train_aug.txt as distributed with DeepLab (the SBD masks converted to VOC's
indices). The default training split is 'train'; set data.train_split='train_aug' for DeepLab's recipe.

An example is {'image': uint8 [H, W, 3], 'segmentation': uint8 [H, W]}: 21 classes (0 background, 1..20
the VOC classes in CLASS_NAMES order), 255 the ignore label (VOC's object borders and difficult regions).
Images are about 500 x 375 and vary; see the pipeline module doc for how they become fixed-size batches.
A mask must be a palette ('P') or grayscale ('L') PNG of indices: an RGB rendering is refused.
Every file a split names is checked when the split is opened; a missing one stops the run naming it.
"""
import os
from typing import List

import numpy as np

from jaxcnn.data import sources
from jaxcnn.errors import UserError

NAME = "voc2012_seg"
CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
SPLITS = ("train", "val", "trainval", "train_aug")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))   # torchvision's references normalise with these


def voc_root(data_dir: str) -> str:
  """The VOC2012 folder under `data_dir` (data_dir/VOCdevkit/VOC2012, data_dir/VOC2012, or data_dir)."""
  for candidate in (os.path.join(data_dir, "VOCdevkit", "VOC2012"), os.path.join(data_dir, "VOC2012"), data_dir):
    if os.path.isdir(os.path.join(candidate, "JPEGImages")):
      return candidate
  return os.path.join(data_dir, "VOCdevkit", "VOC2012")


def read_ids(list_file: str) -> List[str]:
  """Image ids of a split list: '<id>' lines, or DeepLab's '/JPEGImages/<id>.jpg /Seg.../<id>.png' lines."""
  ids = []
  with open(list_file) as f:
    for line in f:
      if line.strip():
        ids.append(os.path.splitext(os.path.basename(line.split()[0]))[0])
  return ids


def read_index_png(path: str) -> np.ndarray:
  """A PNG of class indices (palette or grayscale) as uint8 [H, W]; other modes are a UserError."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    if im.mode not in ("P", "L"):
      raise UserError(f"{path} is a {im.mode} image; want a palette (P) or grayscale (L) PNG of class indices "
                      f"(VOC's SegmentationClass files, not a colour rendering)")
    return np.asarray(im, np.uint8)


def read_rgb(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


class PairSource:
  """Random access to (image file, mask file) pairs: {'image': uint8 [H, W, 3], 'segmentation': uint8 [H, W]}.

  `map_mask(mask, path)` turns the file's values into the dataset's classes (identity by default).
  """
  extra_fields = {}    # nothing besides the declared fields: shapes are known without reading an example

  def __init__(self, name: str, images: List[str], masks: List[str], map_mask=None):
    self.name, self.images, self.masks, self.map_mask = name, images, masks, map_mask

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index) -> dict:
    index = int(index)
    mask = read_index_png(self.masks[index])
    if self.map_mask is not None:
      mask = self.map_mask(mask, self.masks[index])
    return {"image": read_rgb(self.images[index]), "segmentation": mask}

  def describe(self, index: int) -> str:
    return f"{self.images[index]} with mask {self.masks[index]}"

  def __repr__(self) -> str:
    return f"PairSource({self.name!r}, {len(self)} images)"


def check_files(paths: List[str], named_by: str, hint: str) -> None:
  """UserError naming the first missing file (and how many are missing) of those `named_by` lists."""
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise UserError(f"{len(missing)} of the {len(paths)} files named by {named_by} are missing (first: "
                    f"{missing[0]}); {hint}")


def open_split(split: str, data_dir: str) -> PairSource:
  """`register_source` hook: one split of the VOC folder `data.data_dir`."""
  if not data_dir:
    raise UserError(f"dataset '{NAME}' reads files you provide: set data.data_dir to the folder holding "
                    f"VOCdevkit/VOC2012 (see jaxcnn/data/voc.py)")
  root = voc_root(data_dir)
  list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
  mask_dir = os.path.join(root, "SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
  hint = ("SegmentationClassAug/ and train_aug.txt come with DeepLab's SBD-augmented set; or use "
          "data.train_split='train'" if split == "train_aug" else
          "unpack VOCtrainval_11-May-2012.tar into data.data_dir")
  for needed in (os.path.join(root, "JPEGImages"), mask_dir, list_file):
    if not os.path.exists(needed):
      raise UserError(f"VOC 2012 split '{split}' needs {needed}, which is missing under data.data_dir='{data_dir}' "
                      f"({hint}; see jaxcnn/data/voc.py)")
  ids = read_ids(list_file)
  images = [os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids]
  masks = [os.path.join(mask_dir, f"{i}.png") for i in ids]
  check_files(images + masks, list_file, hint)
  return PairSource(f"{NAME}:{split}", images, masks)


INFO = sources.DatasetInfo(NAME, len(CLASS_NAMES), (512, 512, 3), False, "train", "val", None, splits=SPLITS,
                           fields={"image": "image", "segmentation": "mask"}, class_names=CLASS_NAMES)
sources.register_source(INFO, open_split, stats=IMAGENET_STATS)
