"""DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation").

A dilated backbone and an ASPP head (`jaxcnn.layers.aspp`), as segmentation
models of the contract in `fcn.py`: {'out'[, 'aux']} logits at the input size.
Atrous rates default to the paper's (6, 12, 18) at output stride 16, doubled
at 8 (halved at 32); give `atrous_rates` to choose others.

torchvision's models (21 classes by default; parameter counts equal to
torchvision's):
  deeplabv3_resnet50   ResNet-50 at output stride 8, rates 12/24/36,
                       DeepLabHead (ASPP, 3x3 conv-BN-ReLU, 1x1 conv);
                       39,638,869 (42,004,074 with aux_loss)
  deeplabv3_resnet101  the same on ResNet-101: 58,630,997 (60,996,202)
  deeplabv3_mobilenet_v3_large  MobileNetV3-Large (`jaxcnn.models.mobilenet`,
                       `dilated=True`: output stride 16), DeepLabHead with
                       torchvision's rates 12/24/36 on the 960-channel 'high'
                       map; 11,025,477 (11,029,328 with aux_loss, an FCNHead on
                       the 40-channel 'low' map at stride 8). output_stride 16
                       (default) or 32 (undilated backbone).
`aux_loss=True` adds torchvision's FCNHead (on stage 3 for the ResNets) as 'aux'.

The seed document's model:
  deeplabv3_densenet121  DenseNet-121 (`jaxcnn.models.densenet`, dilated:
    output stride 16 by default, or 8), ASPP on its final BN-ReLU map
    (1024 channels): 1x1 + three 3x3 atrous convs at 6/12/18 (12/24/36 at
    OS8) + image pooling, 256 channels each with BN-ReLU, a 1x1 projection
    with BN-ReLU and dropout 0.5, then a 1x1 classifier (no 3x3 conv between:
    the paper's head). 21 classes by default; `num_classes=1` gives one logit
    map for binary segmentation (the task applies the sigmoid).
    Parameters: 6,953,856 in the backbone (densenet121's 7,978,856 minus its
    1000-class classifier 1,025,000) + ASPP 7,932,928 (1x1 branch 1024*256 =
    262,144, three atrous branches 3 * 9*1024*256 = 7,077,888, pooling
    262,144, projection 1280*256 = 327,680, six BNs 6 * 512) + classifier
    256 * C + C: 14,892,181 at 21 classes, 14,887,041 at 1 class (the same at
    OS8: dilation adds no parameters). tests/models/test_deeplab.py computes
    this sum from the layer list and checks the model against it.
"""
from typing import Optional, Sequence

import flax.linen as nn

from jaxcnn.errors import UserError
from jaxcnn.layers.aspp import DeepLabHead
from jaxcnn.models.fcn import SegmentationModel
from jaxcnn.registry import register_model


def default_atrous_rates(output_stride: int) -> tuple:
  """The paper's (6, 12, 18) at output stride 16, scaled by 16 / output_stride."""
  return tuple(r * 16 // output_stride for r in (6, 12, 18))


class DeepLabV3(SegmentationModel):
  """A dilated backbone, `DeepLabHead` as `classifier`, optional FCNHead as `aux_classifier`."""
  atrous_rates: Optional[Sequence[int]] = None   # None: default_atrous_rates(output_stride)
  conv_head: bool = True                         # torchvision's 3x3 conv-BN-ReLU after ASPP
  dropout_rate: float = 0.5                      # after the ASPP projection

  def __post_init__(self):
    if self.atrous_rates is not None and (len(self.atrous_rates) < 1 or min(self.atrous_rates) < 1):
      raise UserError(f"atrous_rates={tuple(self.atrous_rates)} must be positive dilation rates, e.g. (6, 12, 18)")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    super().__post_init__()

  def _head(self) -> nn.Module:
    rates = self.atrous_rates if self.atrous_rates is not None else default_atrous_rates(self.output_stride)
    return DeepLabHead(self.num_classes, tuple(int(r) for r in rates), conv_head=self.conv_head,
                       dropout_rate=self.dropout_rate, **self._norm_options())


class DeepLabV3MobileNet(DeepLabV3):
  """DeepLabV3 on MobileNetV3: its backbone dilates by a flag, so output stride 16 (dilated) or 32."""
  allowed_output_strides = (16, 32)

  def _backbone_options(self) -> dict:
    return dict(dilated=self.output_stride == 16)


register_model("deeplabv3_resnet50", backbone_name="resnet50")(DeepLabV3)
register_model("deeplabv3_resnet101", backbone_name="resnet101")(DeepLabV3)
register_model("deeplabv3_densenet121", backbone_name="densenet121", output_stride=16, conv_head=False)(DeepLabV3)
register_model("deeplabv3_mobilenet_v3_large", backbone_name="mobilenet_v3_large", output_stride=16,
               out_feature="high", aux_feature="low", atrous_rates=(12, 24, 36))(DeepLabV3MobileNet)
