"""torchvision.ops names and semantics in JAX, with fixed shapes (jit/vmap on every backend).

  boxes    box_convert, box_area, box_iou, generalized/distance/complete_box_iou (+ *_loss),
           clip_boxes_to_image, remove_small_boxes (a keep mask), BoxCoder
  nms      nms, batched_nms (indices padded with -1 + count; tiled, O(N + tile^2) memory),
           soft_nms (Bodla et al. 2017), adaptive_nms (Liu et al. 2019)
  roi      roi_align, roi_pool (NHWC; [K, 5] or per-image [N, R, 4] boxes), roi_level_mapper,
           multiscale_roi_align, infer_scale
  anchors  AnchorGenerator, DefaultBoxGenerator, Matcher, SSDMatcher (padded gt + validity mask)
  matching hungarian_match (exact assignment on padded targets: scipy's linear_sum_assignment through
           one jax.pure_callback, the only host round trip; DETR), assign_on_host (its NumPy side)
  masks    project_masks_on_boxes, maskrcnn_loss, maskrcnn_inference, paste_masks_in_image,
           expand_boxes (Mask R-CNN's mask targets, loss and pasting; fixed shapes)
The classification/detection losses (sigmoid_focal_loss, smooth_l1, poly1_cross_entropy,
asymmetric_polynomial_loss) are in jaxcnn.losses.
"""
from jaxcnn.ops.boxes import (BOX_FORMATS, BoxCoder, box_area, box_convert, box_iou, clip_boxes_to_image,
                              complete_box_iou, complete_box_iou_loss, distance_box_iou, distance_box_iou_loss,
                              generalized_box_iou, generalized_box_iou_loss, remove_small_boxes)
from jaxcnn.ops.nms import SOFT_NMS_METHODS, adaptive_nms, batched_nms, nms, soft_nms
from jaxcnn.ops.roi import infer_scale, multiscale_roi_align, roi_align, roi_level_mapper, roi_pool
from jaxcnn.ops.anchors import (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, AnchorGenerator, DefaultBoxGenerator,
                                Matcher, SSDMatcher, retinanet_anchor_sizes)
from jaxcnn.ops.masks import (expand_boxes, maskrcnn_inference, maskrcnn_loss, paste_masks_in_image,
                              project_masks_on_boxes)
from jaxcnn.ops.matching import assign_on_host, hungarian_match
