"""torchvision.ops names and semantics in JAX, with fixed shapes (jit/vmap on every backend)."""
from jaxcnn.ops.boxes import (BOX_FORMATS, BoxCoder, box_area, box_convert, box_iou, clip_boxes_to_image,
                              complete_box_iou, complete_box_iou_loss, distance_box_iou, distance_box_iou_loss,
                              generalized_box_iou, generalized_box_iou_loss, remove_small_boxes)
from jaxcnn.ops.nms import SOFT_NMS_METHODS, adaptive_nms, batched_nms, nms, soft_nms
from jaxcnn.ops.roi import infer_scale, multiscale_roi_align, roi_align, roi_level_mapper, roi_pool
from jaxcnn.ops.anchors import (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, AnchorGenerator, DefaultBoxGenerator,
                                Matcher, SSDMatcher, retinanet_anchor_sizes)
