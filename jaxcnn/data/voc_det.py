"""PASCAL VOC object detection (tfds `voc/2007`, `voc/2012`) as datasets `voc2007_det`, `voc2012_det`, `voc0712_det`.

    voc2007_det   splits 'train' (2,501), 'validation' (2,510), 'test' (4,952); default training split
                  'train+validation' (VOC07 trainval, 5,011 images), eval 'test'
    voc2012_det   splits 'train' (5,717), 'validation' (5,823); default training 'train', eval 'validation'
                  (tfds's VOC 2012 'test' split has no annotations and is not offered)
    voc0712_det   joined (`sources.register_joined`): split 'trainval' = VOC 2007 train + validation then
                  VOC 2012 train + validation (16,551 images), split 'test' = VOC 2007 test: the
                  "07+12" recipe of SSD, YOLOv2 and Faster R-CNN

Prepare with `python -m jaxcnn.data.prepare voc2007_det` (and voc2012_det; `voc0712_det` prepares both).
An example is {'image': uint8 [H, W, 3], 'boxes': float32 [N, 4] xyxy pixels, 'box_classes': int32 [N]
(0..19: CLASS_NAMES, VOC's 20 classes in tfds's order, the background left out), 'box_difficult': bool [N]
(VOC's difficult flag: the VOC evaluator ignores these objects)}; the pipeline checks and pads them as
`jaxcnn.data.detection` says (data.max_boxes slots, default 100). Images are about 500 x 375 and vary;
SSD300's recipe is data.image_size=300, data.resize='stretch',
data.augment='photometric,zoom_out,iou_crop,flip'.
"""
from jaxcnn.data import detection, sources
from jaxcnn.data.voc import IMAGENET_STATS
from jaxcnn.data.voc import CLASS_NAMES as _SEG_CLASS_NAMES

CLASS_NAMES = _SEG_CLASS_NAMES[1:]     # the segmentation dataset's classes without its background 0
FIELDS = {"image": "image", "boxes": "boxes", "box_classes": "box_class", "box_difficult": "box_flag"}


def _converter(tfds_name: str):
  def convert(example: dict, index: int) -> dict:
    return detection.tfds_objects(example, f"example {index} of tfds {tfds_name}",
                                  {"box_difficult": "is_difficult"})
  return convert


VOC2007 = sources.DatasetInfo("voc2007_det", len(CLASS_NAMES), (500, 500, 3), False, "train+validation", "test",
                              "voc/2007", splits=("train", "validation", "test"), fields=FIELDS,
                              class_names=CLASS_NAMES, max_boxes=100)
VOC2012 = sources.DatasetInfo("voc2012_det", len(CLASS_NAMES), (500, 500, 3), False, "train", "validation",
                              "voc/2012", splits=("train", "validation"), fields=FIELDS, class_names=CLASS_NAMES,
                              max_boxes=100)
VOC0712 = sources.DatasetInfo("voc0712_det", len(CLASS_NAMES), (500, 500, 3), False, "trainval", "test", None,
                              splits=("trainval", "test"), fields=FIELDS, class_names=CLASS_NAMES, max_boxes=100)
for _info in (VOC2007, VOC2012):
  sources.register_tfds_dataset(_info, _converter(_info.tfds_name), stats=IMAGENET_STATS)
sources.register_joined(VOC0712, {
    "trainval": (("voc2007_det", "train+validation"), ("voc2012_det", "train+validation")),
    "test": (("voc2007_det", "test"),)}, stats=IMAGENET_STATS)
