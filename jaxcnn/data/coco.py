"""COCO 2017 object detection (tfds `coco/2017`) as dataset `coco2017_det`, and COCO's two label spaces.

COCO's annotation files number their 80 categories with ids 1..90 (the 2014
paper listed 91 categories, 11 of which were never annotated: ids 12, 26, 29,
30, 45, 66, 68, 69, 71, 83; and id 91 is unused). tfds, like most detection
code, uses the contiguous classes 0..79 in id order (its ClassLabel is the
annotation file's category list, which is sorted by id); torchvision's
detection models use the 91-entry space of the ids themselves, with 0 the
background and 'N/A' at the unused ids (`torchvision.models.detection`'s
COCO weights, `_COCO_CATEGORIES`). So:

    CATEGORY_IDS[c]          the COCO category id of contiguous class c (= torchvision's label of c)
    category_id(c), contiguous_class(id) map the two ways (contiguous_class of an unused id is -1)
    CLASS_NAMES[c]           the 80 names, as the annotation files spell them

The evaluator and pretrained torchvision heads (91 outputs) read CATEGORY_IDS;
a model trained here on K = 80 classes uses the task's label c + 1 instead.

Dataset `coco2017_det`: splits 'train' (118,287 images) and 'validation'
(5,000; the default eval split); tfds's 'test' split has no annotations and is
not offered. Prepare with `python -m jaxcnn.data.prepare coco2017_det` (no
TensorFlow needed to read it; about 25 GB of downloads). An example is
{'image': uint8 [H, W, 3], 'boxes': float32 [N, 4] xyxy pixels, 'box_classes':
int32 [N] contiguous 0..79, 'box_crowd': bool [N] (COCO's iscrowd: crowd
regions, which the COCO evaluator ignores and torchvision's references keep in
training)}; the pipeline checks and pads them as `jaxcnn.data.detection` says
(degenerate boxes dropped, data.max_boxes slots, default 100, torchvision's
detections_per_img; an image with more is a UserError). Images without annotations (about 1%
of train2017) are kept as all-background examples; torchvision's references
leave them out of training. Images are about 640 x 480 and vary; batches are
formed as the pipeline module doc says (e.g. RetinaNet's shorter side 800,
longer at most 1333: data.image_size=1333, data.resize_shorter=800).
"""
import numpy as np

from jaxcnn.data import detection, sources
from jaxcnn.data.voc import IMAGENET_STATS
from jaxcnn.errors import UserError

NAME = "coco2017_det"
CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
CATEGORY_IDS = np.array([i for i in range(1, 91) if i not in UNUSED_IDS], np.int32)
NUM_CATEGORY_IDS = 91    # torchvision's COCO label space: 0 background, 1..90 the ids
_CONTIGUOUS = np.full(NUM_CATEGORY_IDS, -1, np.int32)
_CONTIGUOUS[CATEGORY_IDS] = np.arange(len(CATEGORY_IDS))
for _array in (CATEGORY_IDS, _CONTIGUOUS):
  _array.setflags(write=False)


def category_id(classes):
  """COCO category id(s) 1..90 of contiguous class(es) 0..79 (numpy arrays or ints)."""
  classes = np.asarray(classes)
  bad = (classes < 0) | (classes >= len(CATEGORY_IDS))
  if bad.any():
    raise UserError(f"COCO contiguous classes are 0..{len(CATEGORY_IDS) - 1}, got {classes[bad].ravel()[0]}")
  return CATEGORY_IDS[classes]


def contiguous_class(ids):
  """Contiguous class(es) 0..79 of COCO category id(s); -1 for the background 0 and the unused ids."""
  ids = np.asarray(ids)
  bad = (ids < 0) | (ids >= NUM_CATEGORY_IDS)
  if bad.any():
    raise UserError(f"COCO category ids are 0..{NUM_CATEGORY_IDS - 1}, got {ids[bad].ravel()[0]}")
  return _CONTIGUOUS[ids]


def convert(example: dict, index: int) -> dict:
  """A tfds coco/2017 example -> {'image', 'boxes', 'box_classes', 'box_crowd'} (see the module doc)."""
  return detection.tfds_objects(example, f"example {index} of tfds coco/2017", {"box_crowd": "is_crowd"})


INFO = sources.DatasetInfo(NAME, len(CLASS_NAMES), (640, 640, 3), False, "train", "validation", "coco/2017",
                           splits=("train", "validation"),
                           fields={"image": "image", "boxes": "boxes", "box_classes": "box_class",
                                   "box_crowd": "box_flag"},
                           class_names=CLASS_NAMES, max_boxes=100)
sources.register_tfds_dataset(INFO, convert, stats=IMAGENET_STATS)
