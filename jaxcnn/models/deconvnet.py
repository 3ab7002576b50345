"""DeconvNet (Noh, Hong & Han 2015, "Learning Deconvolution Network for Semantic Segmentation").

A segmentation model (the `segmentation` task's contract): `model.apply(
variables, x, train)` with x [B, H, W, C] returns {'out': logits
[B, H, W, num_classes]} at the input size; `num_classes=1` is the binary case.

The network of the paper's Table 1:
  convolution network: VGG-16's 13 convolutions with batch normalisation
    (the `vgg16_bn` classification model, as submodule `backbone`, so its
    ImageNet weights load unchanged), each 2x2/2 max-pooling recording its
    switches (the argmax locations, `jaxcnn.layers.pool.max_pool_with_argmax`);
    fc6, a 7x7 convolution to 4096 channels (7x7 -> 1x1 at 224x224), and
    fc7, a 1x1 convolution to 4096, each with BN and ReLU;
  deconvolution network, its mirror: deconv-fc6 (a 7x7 transposed
    convolution back to 512 channels at pool5's size), then for stages 5..1
    unpooling with that stage's switches (`max_unpool`: each value returns to
    the place of its maximum, the rest is zero) followed by 3x3 deconvolution
    layers (transposed convolutions, stride 1, which keep the size) with
    512-512-512, 512-512-256, 256-256-128, 128-64, 64-64 channels, each with
    BN and ReLU;
  a 1x1 convolution to the classes (21 for PASCAL VOC).
Batch normalisation after every convolution and deconvolution but the last
is the paper's (its training section); the convolutions keep their biases, as the
paper's Caffe layers. Parameter count at 21 classes: 251,772,245 without
the BN parameters (the paper's "252M"), 251,805,653 with them (BN adds
scale and shift to 16,704 channels); tests/models/test_deconvnet.py derives
both from the layer list. `deconvnet_variables(vgg16_bn_variables)` turns
`vgg16_bn` classification weights into the backbone, fc6 and fc7 (the paper
starts from VGG-16 trained on ILSVRC); the deconvolution network starts from
zero-mean Gaussians (as the paper says; std 0.01 here, Caffe's usual filler).

What is and is not the paper's: the network above is; the paper's training
and inference pipeline is not part of a model: it trains in two stages on
object-centred crops (ground-truth boxes, then proposals) and segments a
test image instance-wise, running the network on EdgeBoxes object
proposals (the top 50 by objectness) and aggregating their score maps (then optionally a CRF and an
ensemble with FCN). Here the network runs on whole images like the other
segmentation models; there are no edge-box proposals, no instance-wise
aggregation, no CRF.

Sizes: H and W must be multiples of 32 (five 2x poolings whose switches are
unpooled exactly) with H/32 and W/32 at least `fc_size` (7: 224x224 and
up; larger inputs give fc6 a larger map, the deconv-fc6 restores pool5's
size). `fc_size` and `fc_width` (the paper's 7 and 4096) can be reduced for
small images: fc_size=1 runs on 32x32 and up.
"""
import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, ConvTranspose
from jaxcnn.layers.pool import max_pool_with_argmax, max_unpool
from jaxcnn.registry import create_model, register_model

# The deconvolution stages, deepest first: (stage, channels of its 3x3 deconvolutions).
DECONV_STAGES = ((5, (512, 512, 512)), (4, (512, 512, 256)), (3, (256, 256, 128)), (2, (128, 64)), (1, (64, 64)))

deconv_init = nn.initializers.normal(0.01)


class DeconvNet(nn.Module):
  """VGG-16-BN encoder with switch-recording pooling, fc6/fc7, mirrored unpooling + deconvolution decoder."""
  num_classes: int = 21
  fc_size: int = 7
  fc_width: int = 4096
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.fc_size < 1 or self.fc_width < 1 or self.num_classes < 1:
      raise UserError(f"fc_size={self.fc_size}, fc_width={self.fc_width} and num_classes={self.num_classes} "
                      f"must be >= 1")
    super().__post_init__()

  def _check_size(self, height: int, width: int):
    least = 32 * self.fc_size
    if height % 32 or width % 32 or height < least or width < least:
      raise UserError(f"DeconvNet needs H and W that are multiples of 32 and at least {least} "
                      f"(32 * fc_size={self.fc_size}), got {height}x{width}")

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
    self._check_size(*x.shape[1:3])
    layer_args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             axis_name=self.bn_axis_name, **layer_args)
    backbone = create_model("vgg16_bn", return_features=True, bn_axis_name=self.bn_axis_name, **layer_args)
    features = backbone.clone(parent=self, name="backbone")(x, train)
    switches = {}
    for stage in range(1, 6):
      pooled, switches[stage] = max_pool_with_argmax(features[f"stage{stage}"], 2)
    k = self.fc_size
    y = Conv(self.fc_width, (k, k), padding="VALID", **layer_args, name="fc6")(pooled)
    y = nn.relu(norm(name="fc6_bn")(y))
    y = Conv(self.fc_width, (1, 1), **layer_args, name="fc7")(y)
    y = nn.relu(norm(name="fc7_bn")(y))
    y = ConvTranspose(512, (k, k), padding="VALID", kernel_init=deconv_init, **layer_args, name="deconv_fc6")(y)
    y = nn.relu(norm(name="deconv_fc6_bn")(y))
    for stage, widths in DECONV_STAGES:
      y = max_unpool(y, switches[stage], 2, output_size=features[f"stage{stage}"].shape[1:3])
      for i, width in enumerate(widths, start=1):
        y = ConvTranspose(width, (3, 3), padding="SAME", kernel_init=deconv_init, **layer_args,
                          name=f"deconv{stage}_{i}")(y)
        y = nn.relu(norm(name=f"deconv{stage}_{i}_bn")(y))
    logits = Conv(self.num_classes, (1, 1), kernel_init=deconv_init, **layer_args, name="classifier")(y)
    return {"out": logits}


def deconvnet_variables(vgg16_bn_variables: dict) -> dict:
  """`vgg16_bn` classification variables -> {'params': {'backbone', 'fc6', 'fc7'}, 'batch_stats': {'backbone'}}.

  fc1 (reading the 7x7x512 map flattened in NHWC order) becomes the 7x7 conv
  fc6, fc2 the 1x1 conv fc7 (for the default fc_size=7, fc_width=4096); the
  1000-class fc3 is dropped. Merge the result into a fresh model's variables:
  the deconvolution network and the new BN layers keep their initialisation.
  """
  params = vgg16_bn_variables.get("params", {})
  if "fc1" not in params or "fc2" not in params or "batch_stats" not in vgg16_bn_variables:
    raise UserError("these are not vgg16_bn classification variables (need 'params' with fc1/fc2 and "
                    "'batch_stats')")
  fc1, fc2 = params["fc1"], params["fc2"]
  return {
      "params": {
          "backbone": {k: v for k, v in params.items() if not k.startswith("fc")},
          "fc6": {"kernel": jnp.reshape(fc1["kernel"], (7, 7, 512, -1)), "bias": fc1["bias"]},
          "fc7": {"kernel": jnp.reshape(fc2["kernel"], (1, 1) + tuple(fc2["kernel"].shape)), "bias": fc2["bias"]},
      },
      "batch_stats": {"backbone": dict(vgg16_bn_variables["batch_stats"])},
  }


register_model("deconvnet")(DeconvNet)
