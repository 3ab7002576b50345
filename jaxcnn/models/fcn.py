"""Fully convolutional networks (Long, Shelhamer & Darrell 2015): torchvision's FCN-ResNets and the paper's FCN-VGG16s.

Every model here is a segmentation model (the contract the `segmentation`
task relies on): `model.apply(variables, x, train)` with x [B, H, W, C], any
H and W, returns {'out': logits [B, H, W, num_classes]} at the input size,
plus 'aux' when the model has an auxiliary head and `aux_loss=True`. The
backbone is a submodule `backbone` whose variables are exactly those of the
registered classification model minus its classifier, so ImageNet weights of
`resnet50` / `vgg16` load into `backbone/` unchanged.

torchvision's models (`SegmentationModel`, shared with `deeplab.py`):
  fcn_resnet50, fcn_resnet101: ResNet with strides 2 -> dilation in stages 3
  and 4 (output stride 8), torchvision's FCNHead on stage 4 (3x3 conv to 512,
  BN, ReLU, dropout 0.1, 1x1 conv), the same head on stage 3 (1024 -> 256) as
  `aux_classifier` with `aux_loss=True`, logits resized bilinearly
  (`F.interpolate(align_corners=False)`) to the input. 21 classes by default.
  Parameter counts equal torchvision's: fcn_resnet50 32,957,013 (35,322,218
  with aux), fcn_resnet101 51,949,141 (54,314,346). `output_stride` 8 (as
  torchvision), 16 or 32 changes only the backbone's dilation.
  `backbone_name` puts another registered backbone under the same heads when
  it has `return_features` with 'stage3'/'stage4' and `output_stride` (e.g.
  'resnet18', 'resnext50_32x4d'); its own option errors surface at init.

The paper's models (`FCNVGG`): fcn32s, fcn16s, fcn8s on VGG-16
(`jaxcnn.models.vgg`, configuration D). pool5 -> fc6 (7x7 conv, 4096) ->
ReLU -> dropout 0.5 -> fc7 (1x1 conv, 4096) -> ReLU -> dropout 0.5 ->
score_fr (1x1 conv to the classes): the classifier "convolutionalized", as
the paper's Caffe nets. FCN-16s adds score_pool4 (1x1 conv on pool4) to the
2x-upsampled score map, FCN-8s then score_pool3 to the 2x upsampling of that
sum; the fused map is upsampled 32x, 16x or 8x to the input.
Upsampling follows the paper (sec. 4.2) and its Caffe code
(shelhamer/fcn.berkeleyvision.org, `surgery.interp`): the 2x layers
(`upscore2`, `upscore_pool4`) are transposed convolutions (kernel 4, stride
2, no bias, classes x classes) initialised to bilinear interpolation in each
class's own channel and then learned; the final 2s x 2s / stride s layer is
fixed bilinear interpolation (lr_mult 0 in Caffe), computed here as two small
interpolation matrices, not a parameter. `learn_final_upsampling=True` makes
it a learned transposed convolution `upscore` as well (Caffe's blob layout).
Score layers start at zero, as the paper initialises them.
Sizes: Caffe pads conv1_1 by 100 and crops every fused map at offsets
computed from the layer geometry. Here the VGG-16 convolutions keep their
padding of 1, fc6 is padded 'same' (3), and the input is zero-padded at the
bottom and right to a multiple of 32, so pool3/4/5 are exactly 1/8, 1/16,
1/32 of it; each transposed convolution's full output is cropped at the
offset that puts its input's pixel centres where the skip map's (and finally
the image's) are: 1 for the 2x layers, s/2 for the s-fold one, then to the
input's H x W. Any input size works and the output has the input's size.
Parameter counts at 21 classes (VGG-16 convolutions 14,714,688, fc6
102,764,544, fc7 16,781,312, score_fr 86,037; score_pool4 10,773,
score_pool3 5,397, each 2x upsampling 21*21*4*4 = 7,056): fcn32s
134,346,581 (the paper's Table 1: 134M), fcn16s 134,364,410, fcn8s
134,376,863; `learn_final_upsampling` adds 21*21*(2s)^2.
`fcn_vgg16_variables(vgg16_variables)` turns `vgg16` classification weights
into these models' backbone, fc6 and fc7 (the paper's convolutionalization).
Fine-tuning reaches it through the registry hook `FCNVGG.adapt_pretrained`:
`--config.finetune.weights=vgg16.pth --config.finetune.converter_name=vgg16`
on fcn32s/16s/8s loads the backbone and fc6/fc7, and the score and upsampling
layers keep their initialisation (zero scores, bilinear upsampling), as the
paper starts; FCN-32s weights (a jaxcnn workdir) into FCN-16s, or FCN-16s into
FCN-8s, keep the new skip layers' initialisation the same way (the paper's
staged training).
"""
import functools
import logging
from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers import Conv, ConvTranspose, max_pool, resize_bilinear
from jaxcnn.layers.aspp import FCNHead
from jaxcnn.registry import create_model, list_models, register_model

log = logging.getLogger("jaxcnn")

OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(value, allowed=OUTPUT_STRIDES):
  if value not in allowed:
    raise UserError(f"output_stride={value!r} is not supported (allowed: {', '.join(map(str, allowed))})")


class SegmentationModel(nn.Module):
  """torchvision's `_SimpleSegmentationModel`: backbone features -> head ('out') and FCNHead ('aux').

  Subclasses say which head `classifier` is (`_head`). The backbone is the
  registered model `backbone_name` built with `return_features=True`; the
  head reads its feature `out_feature`, the auxiliary head `aux_feature`.
  """
  num_classes: int = 21
  aux_loss: bool = False
  output_stride: int = 8
  backbone_name: str = "resnet50"
  out_feature: str = "stage4"
  aux_feature: str = "stage3"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    check_output_stride(self.output_stride, self.allowed_output_strides)
    if self.backbone_name not in list_models():
      raise unknown("backbone_name", self.backbone_name, list_models())
    if self.num_classes < 1:
      raise UserError(f"num_classes={self.num_classes} must be >= 1")
    super().__post_init__()

  allowed_output_strides = OUTPUT_STRIDES

  def _backbone_options(self) -> dict:
    return dict(output_stride=self.output_stride)

  def _head(self) -> nn.Module:
    return FCNHead(self.num_classes, **self._norm_options())

  def _norm_options(self) -> dict:
    return dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)

  def setup(self):
    # Built in setup so the backbone is named by its attribute, `backbone`.
    self.backbone = create_model(self.backbone_name, return_features=True, **self._norm_options(),
                                 **self._backbone_options())
    self.classifier = self._head()
    if self.aux_loss:
      self.aux_classifier = FCNHead(self.num_classes, **self._norm_options())

  def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
    features = self.backbone(x, train=train)
    size = x.shape[1:3]
    result = {"out": resize_bilinear(self.classifier(features[self.out_feature], train), size)}
    if self.aux_loss:
      result["aux"] = resize_bilinear(self.aux_classifier(features[self.aux_feature], train), size)
    return result


class FCN(SegmentationModel):
  """torchvision's FCN: a dilated ResNet and FCNHead (see module doc)."""


# ----------------------------------------------------------------------------- the paper's FCN-VGG16

def bilinear_kernel_1d(size: int) -> np.ndarray:
  """The 1-D bilinear filter of Caffe FCN's `surgery.upsample_filt` (its outer product is the 2-D one)."""
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  return 1.0 - np.abs(np.arange(size) - center) / factor


def bilinear_transpose_init(key, shape, dtype=jnp.float32):
  """[k, k, C, C] transposed-conv kernel: bilinear within each channel, zero across channels."""
  del key
  k, _, c_in, c_out = shape
  f = bilinear_kernel_1d(k)
  kernel = np.zeros(shape, np.float32)
  kernel[:, :, np.arange(min(c_in, c_out)), np.arange(min(c_in, c_out))] = np.outer(f, f)[:, :, None]
  return jnp.asarray(kernel, dtype)


def _interpolation_matrix(in_size: int, factor: int, out_size: int) -> np.ndarray:
  """[out_size, in_size]: a stride-`factor` bilinear transposed conv (kernel 2 * factor), cropped at factor // 2."""
  f = bilinear_kernel_1d(2 * factor)
  full = np.zeros((in_size * factor + factor, in_size), np.float32)
  for i in range(in_size):
    full[i * factor:i * factor + 2 * factor, i] = f
  return full[factor // 2:factor // 2 + out_size]


def _crop(x, offset: int, size):
  return x[:, offset:offset + size[0], offset:offset + size[1]]


class FCNVGG(nn.Module):
  """FCN-32s / 16s / 8s on VGG-16 (`stride` 32, 16, 8; see module doc)."""
  stride: int = 32
  num_classes: int = 21
  dropout_rate: float = 0.5
  learn_final_upsampling: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.stride not in (8, 16, 32):
      raise UserError(f"stride={self.stride!r} is not supported (allowed: 8, 16, 32: FCN-8s, 16s, 32s)")
    if self.num_classes < 1:
      raise UserError(f"num_classes={self.num_classes} must be >= 1")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    super().__post_init__()

  def setup(self):
    self.backbone = create_model("vgg16", return_features=True, dtype=self.dtype, param_dtype=self.param_dtype)
    conv = functools.partial(Conv, dtype=self.dtype, param_dtype=self.param_dtype)
    torch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    self.fc6 = conv(4096, (7, 7), padding=3, kernel_init=torch_init)
    self.fc7 = conv(4096, (1, 1), kernel_init=torch_init)
    score = functools.partial(conv, self.num_classes, (1, 1), kernel_init=nn.initializers.zeros)
    upscore = functools.partial(ConvTranspose, self.num_classes, (4, 4), strides=(2, 2), padding="VALID",
                                use_bias=False, kernel_init=bilinear_transpose_init, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    self.score_fr = score()
    self.dropout = nn.Dropout(self.dropout_rate)
    if self.stride <= 16:
      self.upscore2, self.score_pool4 = upscore(), score()
    if self.stride == 8:
      self.upscore_pool4, self.score_pool3 = upscore(), score()
    if self.learn_final_upsampling:
      s = self.stride
      self.upscore = ConvTranspose(self.num_classes, (2 * s, 2 * s), strides=(s, s), padding="VALID",
                                   use_bias=False, kernel_init=bilinear_transpose_init, dtype=self.dtype,
                                   param_dtype=self.param_dtype)

  def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
    size = x.shape[1:3]
    padded = [-(-n // 32) * 32 for n in size]
    x = jnp.pad(x, ((0, 0), (0, padded[0] - size[0]), (0, padded[1] - size[1]), (0, 0)))
    features = self.backbone(x, train=train)
    drop = functools.partial(self.dropout, deterministic=not train)
    y = drop(nn.relu(self.fc6(max_pool(features["stage5"], 2, 2))))
    y = drop(nn.relu(self.fc7(y)))
    y = self.score_fr(y)
    if self.stride <= 16:
      skip = self.score_pool4(max_pool(features["stage4"], 2, 2))
      y = _crop(self.upscore2(y), 1, skip.shape[1:3]) + skip
    if self.stride == 8:
      skip = self.score_pool3(max_pool(features["stage3"], 2, 2))
      y = _crop(self.upscore_pool4(y), 1, skip.shape[1:3]) + skip
    s = self.stride
    if self.learn_final_upsampling:
      return {"out": _crop(self.upscore(y), s // 2, size)}
    rows = jnp.asarray(_interpolation_matrix(y.shape[1], s, size[0]), y.dtype)
    cols = jnp.asarray(_interpolation_matrix(y.shape[2], s, size[1]), y.dtype)
    return {"out": jnp.einsum("hi,bijc,wj->bhwc", rows, y, cols)}


def fcn_vgg16_variables(vgg16_variables: dict) -> dict:
  """`vgg16` classification params -> {'params': {'backbone', 'fc6', 'fc7'}} of an FCN-VGG16 (the paper's start).

  fc1 (25088 -> 4096, reading a 7x7x512 map flattened in NHWC order) becomes
  the 7x7 conv fc6, fc2 the 1x1 conv fc7; the 1000-class fc3 is dropped (the
  score layers are new). Merge the result into a fresh model's variables.
  """
  params = vgg16_variables.get("params", vgg16_variables)
  for key in ("fc1", "fc2"):
    if key not in params:
      raise UserError(f"these are not vgg16 classification weights: no '{key}' (need vgg16 with its classifier)")
  backbone = {k: v for k, v in params.items() if not k.startswith("fc")}
  fc1, fc2 = params["fc1"], params["fc2"]
  return {"params": {
      "backbone": backbone,
      "fc6": {"kernel": jnp.reshape(fc1["kernel"], (7, 7, 512, -1)), "bias": fc1["bias"]},
      "fc7": {"kernel": jnp.reshape(fc2["kernel"], (1, 1) + tuple(fc2["kernel"].shape)), "bias": fc2["bias"]},
  }}


def adapt_pretrained(variables: dict, target: dict) -> dict:
  """Fine-tuning hook of the FCN-VGG16s: `vgg16` or FCN-VGG weights brought to the target model's layout.

  vgg16 classification weights (fc1/fc2/fc3, no `backbone`) become the backbone,
  fc6 and fc7 (`fcn_vgg16_variables`). When the target is an FCN-VGG, its
  top-level layers the weights lack (the score layers and upsamplings of a
  vgg16 start, or FCN-16s/8s's skip layers from FCN-32s weights) are taken
  from `target`, so they keep their initialisation, and listed in the log.
  Anything else passes through unchanged (the loader's shape and name checks
  still apply to it).
  """
  params, fresh = variables.get("params", {}), target.get("params", {})
  if "fc1" in params and "backbone" not in params and "fc6" in fresh:
    variables = {**variables, **fcn_vgg16_variables(variables)}
    params = variables["params"]
  if "score_fr" in fresh and "backbone" in params:
    kept = sorted(k for k in fresh if k not in params)
    if kept:
      log.info("fine-tuning: kept their initialisation (absent from the weights): %s", ", ".join(kept))
      variables = {**variables, "params": {**params, **{k: fresh[k] for k in kept}}}
  return variables


FCNVGG.adapt_pretrained = staticmethod(adapt_pretrained)

register_model("fcn_resnet50", backbone_name="resnet50")(FCN)
register_model("fcn_resnet101", backbone_name="resnet101")(FCN)
register_model("fcn32s", stride=32)(FCNVGG)
register_model("fcn16s", stride=16)(FCNVGG)
register_model("fcn8s", stride=8)(FCNVGG)
