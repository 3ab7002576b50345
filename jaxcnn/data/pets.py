"""The Oxford-IIIT Pet dataset's segmentation trimaps (tfds `oxford_iiit_pet`), as dataset `oxford_iiit_pet`.

Read through `tfds.data_source` like the other tfds datasets (prepared by `python -m jaxcnn.data.prepare
oxford_iiit_pet`, or on first use with data.download=True); splits 'train' (3,680 images) and 'test'
(3,669). An example is {'image': uint8 [H, W, 3], 'segmentation': uint8 [H, W]} with the trimap
(1 pet, 2 background, 3 border, as the dataset's authors mark it) mapped to 2 classes: pet 1,
background 0, and the border, the uncertain band around the outline, to the ignore label 255 (neither
trained nor scored). A binary model (one sigmoid output) reads the same labels. The breed and species
labels are not carried. Images vary in size (about 500 x 375); the native output size (data.image_size =
0) is 256 x 256, and batches are formed as the pipeline module doc describes.
"""
import numpy as np

from jaxcnn.data import sources
from jaxcnn.data.voc import IMAGENET_STATS
from jaxcnn.errors import UserError

NAME = "oxford_iiit_pet"
IGNORE = 255
CLASS_NAMES = ("background", "pet")
# trimap value -> class: 1 pet -> 1, 2 background -> 0, 3 border -> ignored; -1 marks values a trimap never has.
TRIMAP_TO_CLASS = np.full(256, -1, np.int16)
TRIMAP_TO_CLASS[1:4] = (1, 0, IGNORE)


def convert(example: dict, index: int) -> dict:
  """A tfds oxford_iiit_pet example -> {'image', 'segmentation'} (see the module doc)."""
  trimap = np.asarray(example["segmentation_mask"], np.uint8)
  if trimap.ndim == 3:
    trimap = trimap[..., 0]
  mapped = TRIMAP_TO_CLASS[trimap]
  if (mapped < 0).any():
    value = int(trimap[mapped < 0][0])
    raise UserError(f"example {index} of tfds {NAME} has trimap value {value}; allowed: 1 (pet), 2 (background), "
                    f"3 (border)")
  return {"image": np.asarray(example["image"], np.uint8), "segmentation": mapped.astype(np.uint8)}


INFO = sources.DatasetInfo(NAME, len(CLASS_NAMES), (256, 256, 3), False, "train", "test", NAME,
                           fields={"image": "image", "segmentation": "mask"}, ignore_label=IGNORE,
                           class_names=CLASS_NAMES)
sources.register_tfds_dataset(INFO, convert, stats=IMAGENET_STATS)
