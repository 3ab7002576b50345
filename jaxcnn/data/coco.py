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

Dataset `coco2017_inst` (instance masks; tfds coco/2017 has none) reads COCO's official files under
data.data_dir with pycocotools:

    annotations/instances_train2017.json   train2017/<file_name>.jpg     split 'train' (118,287 images)
    annotations/instances_val2017.json     val2017/<file_name>.jpg       split 'val' (5,000; the eval split)

An example is coco2017_det's plus 'box_masks': uint8 [N, H, W] (kind 'box_mask'), annotation n's pixels
(pycocotools' annToMask: polygons and RLEs, crowd regions included), decoded when the example is read.
Images are the annotation file's, sorted by id, those without annotations kept; boxes are the files'
[x, y, w, h] as xyxy. `register_coco_instances(name, {split: (annotation file, image folder)})` adds the
same for other files in COCO's format (relative paths are under data.data_dir).
"""
import contextlib
import io
import os
from typing import Dict, Sequence, Tuple

import numpy as np

from jaxcnn.data import detection, sources
from jaxcnn.data.voc import IMAGENET_STATS, read_rgb
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


INST_NAME = "coco2017_inst"
INST_FIELDS = {"image": "image", "boxes": "boxes", "box_classes": "box_class", "box_crowd": "box_flag",
               "box_masks": "box_mask"}
LAYOUT = ("annotations/instances_{train,val}2017.json and {train,val}2017/ (COCO's official layout: "
          "see jaxcnn/data/coco.py)")


class CocoInstances:
  """Random access to the images of a COCO instances annotation file, with their boxes and masks (module doc)."""
  extra_fields = {}    # nothing besides the declared fields

  def __init__(self, name: str, annotation_file: str, image_dir: str, category_ids: Sequence[int]):
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    try:
      with contextlib.redirect_stdout(io.StringIO()):   # COCO() prints its progress
        self.coco = COCO(annotation_file)
    except (ValueError, KeyError, TypeError) as err:
      raise UserError(f"{annotation_file} is not a COCO instances annotation file: {err}") from None
    self.name, self.image_dir = name, image_dir
    self.ids = sorted(self.coco.imgs)
    self.contiguous = {int(c): i for i, c in enumerate(category_ids)}
    unknown_ids = sorted({a["category_id"] for a in self.coco.anns.values()} - set(self.contiguous))
    if unknown_ids:
      raise UserError(f"{annotation_file} has category id {unknown_ids[0]}, which dataset '{name}' does not "
                      f"know; its ids are {sorted(self.contiguous)[:5]}...{sorted(self.contiguous)[-1]}")

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index) -> dict:
    info = self.coco.imgs[self.ids[int(index)]]
    path = os.path.join(self.image_dir, info["file_name"])
    image = read_rgb(path)
    if image.shape[:2] != (info["height"], info["width"]):
      raise UserError(f"{path} is {image.shape[0]}x{image.shape[1]}; its annotations say "
                      f"{info['height']}x{info['width']}")
    anns = self.coco.imgToAnns.get(info["id"], [])
    boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]     # [x, y, w, h] -> xyxy
    masks = [self.coco.annToMask(a) for a in anns]
    return {"image": image, "boxes": boxes,
            "box_classes": np.array([self.contiguous[a["category_id"]] for a in anns], np.int32),
            "box_crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
            "box_masks": np.stack(masks) if masks else np.zeros((0,) + image.shape[:2], np.uint8)}

  def describe(self, index: int) -> str:
    return f"{os.path.join(self.image_dir, self.coco.imgs[self.ids[int(index)]]['file_name'])} ({self.name})"

  def __repr__(self) -> str:
    return f"CocoInstances({self.name!r}, {len(self)} images)"


def register_coco_instances(name: str, files: Dict[str, Tuple[str, str]], *, train_split: str = "",
                            eval_split: str = "", category_ids: Sequence[int] = tuple(CATEGORY_IDS),
                            class_names: Sequence[str] = CLASS_NAMES, max_boxes: int = 100,
                            layout: str = "") -> sources.DatasetInfo:
  """Registers dataset `name`: split s is the images of `files[s]` = (annotation file, image folder).

  Category id category_ids[c] is class c (default COCO's 80, as coco2017_det); relative paths are under
  data.data_dir. `layout` describes the expected files in the messages about missing ones.
  """
  splits = tuple(files)
  layout = layout or ", ".join(f"{a} and {d}/" for a, d in files.values())

  def open_split(split: str, data_dir: str) -> CocoInstances:
    annotation_file, image_dir = (os.path.join(data_dir or "", p) for p in files[split])
    for needed in (annotation_file, image_dir):
      if not os.path.exists(needed):
        raise UserError(f"dataset '{name}' split '{split}' needs {needed}, which is missing "
                        f"(data.data_dir='{data_dir}'; want {layout})")
    try:
      import pycocotools  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise UserError(f"dataset '{name}' needs pycocotools: pip install 'jaxcnn[detection]'") from None
    return CocoInstances(f"{name}:{split}", annotation_file, image_dir, category_ids)

  info = sources.DatasetInfo(name, len(class_names), (640, 640, 3), False, train_split or splits[0],
                             eval_split or splits[-1], None, splits=splits, fields=INST_FIELDS,
                             class_names=tuple(class_names), max_boxes=max_boxes)
  sources.register_source(info, open_split, stats=IMAGENET_STATS)
  return info


INST_INFO = register_coco_instances(
    INST_NAME, {"train": ("annotations/instances_train2017.json", "train2017"),
                "val": ("annotations/instances_val2017.json", "val2017")}, layout=LAYOUT)
