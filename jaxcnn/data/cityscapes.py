"""Cityscapes fine annotations from the user's own files, registered as dataset `cityscapes`.

Point `data.data_dir` at the folder holding (from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip,
www.cityscapes-dataset.com):

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png    2975 / 500 / 1525 images
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     the label-id PNG of each

Splits 'train', 'val' (the default eval split) and 'test' (whose public annotations are empty: every pixel
ignored). Images are listed in sorted path order; each needs its gtFine labelIds file, else the run stops
naming it. An example is {'image': uint8 [1024, 2048, 3], 'segmentation': uint8 [1024, 2048]}: the 34 label
ids (0..33) mapped to the 19 training classes of the benchmark (TRAIN_IDS, as cityscapesScripts' labels.py
defines them: road 0, sidewalk 1, building 2, wall 3, fence 4, pole 5, traffic light 6, traffic sign 7,
vegetation 8, terrain 9, sky 10, person 11, rider 12, car 13, truck 14, bus 15, train 16, motorcycle 17,
bicycle 18), every other id to the ignore label 255. A value that is not a label id is a UserError naming
the file. The native output size (data.image_size = 0) is 512 x 1024, half the resolution.
"""
import glob
import os

import numpy as np

from jaxcnn.data import sources
from jaxcnn.data.voc import IMAGENET_STATS, PairSource, check_files
from jaxcnn.errors import UserError

NAME = "cityscapes"
CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
IGNORE = 255
NUM_LABEL_IDS = 34
# label id -> train id for the 19 evaluated classes (cityscapesScripts labels.py); all other ids are ignored.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def _lookup_table() -> np.ndarray:
  table = np.full(256, -1, np.int16)
  table[:NUM_LABEL_IDS] = IGNORE
  for label_id, train_id in TRAIN_IDS.items():
    table[label_id] = train_id
  return table


LOOKUP = _lookup_table()


def to_train_ids(label_ids: np.ndarray, path: str = "a mask") -> np.ndarray:
  """uint8 label ids [H, W] -> uint8 train ids (0..18, 255 ignored); ids past 33 are a UserError naming `path`."""
  mapped = LOOKUP[label_ids]
  if (mapped < 0).any():
    value = int(label_ids[mapped < 0][0])
    raise UserError(f"{path} holds value {value}, which is not a Cityscapes label id (0..{NUM_LABEL_IDS - 1}); "
                    f"use the gtFine *{LABEL_SUFFIX} files")
  return mapped.astype(np.uint8)


def open_split(split: str, data_dir: str) -> PairSource:
  """`register_source` hook: one split of the Cityscapes folder `data.data_dir`."""
  if not data_dir:
    raise UserError(f"dataset '{NAME}' reads files you provide: set data.data_dir to the folder holding "
                    f"leftImg8bit/ and gtFine/ (see jaxcnn/data/cityscapes.py)")
  image_dir = os.path.join(data_dir, "leftImg8bit", split)
  label_dir = os.path.join(data_dir, "gtFine", split)
  hint = "unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into data.data_dir"
  for needed in (image_dir, label_dir):
    if not os.path.isdir(needed):
      raise UserError(f"Cityscapes split '{split}' needs {needed}, which is missing ({hint}; see "
                      f"jaxcnn/data/cityscapes.py)")
  images = sorted(glob.glob(os.path.join(image_dir, "*", "*" + IMAGE_SUFFIX)))
  if not images:
    raise UserError(f"no *{IMAGE_SUFFIX} files in {image_dir}/<city>/ ({hint})")
  labels = [os.path.join(label_dir, os.path.relpath(p, image_dir)[:-len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
            for p in images]
  check_files(labels, f"the images of {image_dir}", hint)
  return PairSource(f"{NAME}:{split}", images, labels, map_mask=to_train_ids)


INFO = sources.DatasetInfo(NAME, len(CLASS_NAMES), (512, 1024, 3), False, "train", "val", None,
                           splits=("train", "val", "test"), fields={"image": "image", "segmentation": "mask"},
                           ignore_label=IGNORE, class_names=CLASS_NAMES)
sources.register_source(INFO, open_split, stats=IMAGENET_STATS)
