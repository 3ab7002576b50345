"""PyTorch twin of `python -m jaxcnn.bench --task=detection`: one SGD train step of a torchvision detector.

    python benchmarks/torch_detection_reference.py --model=retinanet_resnet50_fpn --batch=2 --image-size=512

Same work as the JAX bench: random images (channels_last), 8 random boxes per image of 1/16 to 1/2 of the
image side with random classes (the last two boxes of every other image left out, as the JAX bench pads
them), the model in train mode returning torchvision's loss dict, its sum, backward, SGD (lr 0.01, momentum
0.9), float32, `torch.set_num_threads(2)`. torchvision's `GeneralizedRCNNTransform` is replaced by an
identity (the images are already normalised and of the size asked for), so both frameworks see the same
tensor; `--num-classes` is the dataset's K and the model gets K + 1 (background), as jaxcnn's task builds it.
A benchmark-only script: torch is not a dependency of jaxcnn.
"""
import argparse
import json
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from torch_detr_reference import detr_resnet50  # the official DETR's structure (not in torchvision)
from torch_reference import timed  # same directory: run as a script, like torch_reference.py

MODELS = {
    "retinanet_resnet50_fpn": torchvision.models.detection.retinanet_resnet50_fpn,
    "retinanet_resnet50_fpn_v2": torchvision.models.detection.retinanet_resnet50_fpn_v2,
    "fcos_resnet50_fpn": torchvision.models.detection.fcos_resnet50_fpn,
    "ssd300_vgg16": torchvision.models.detection.ssd300_vgg16,
    "fasterrcnn_resnet50_fpn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "detr_resnet50": detr_resnet50,
}
BOXES = 8


class IdentityTransform(torch.nn.Module):
  """Stands in for GeneralizedRCNNTransform: no resize, no normalisation, the batch as it is."""

  def forward(self, images, targets=None):
    batch = torch.stack(list(images)).contiguous(memory_format=torch.channels_last)
    return ImageList(batch, [tuple(batch.shape[-2:])] * len(batch)), targets

  def postprocess(self, detections, image_sizes, original_image_sizes):
    return detections  # GeneralizedRCNN (Faster R-CNN) calls it in training too


def synthetic_targets(batch, image_size, num_classes, rng):
  targets = []
  for i in range(batch):
    centres = rng.uniform(0, image_size, size=(BOXES, 2))
    sides = rng.uniform(image_size / 16, image_size / 2, size=(BOXES, 2))
    boxes = np.clip(np.concatenate([centres - sides / 2, centres + sides / 2], -1), 0, image_size)
    labels = rng.integers(0, num_classes, size=BOXES) + 1
    keep = BOXES - 2 if i % 2 == 0 else BOXES
    targets.append({"boxes": torch.tensor(boxes[:keep], dtype=torch.float32),
                    "labels": torch.tensor(labels[:keep], dtype=torch.int64)})
  return targets


def bench(args) -> dict:
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = MODELS[args.model](weights=None, weights_backbone=None, num_classes=args.num_classes + 1)
  model.transform = IdentityTransform()
  model = model.to(memory_format=torch.channels_last).train()
  rng = np.random.default_rng(0)
  images = list(torch.tensor(rng.normal(size=(args.batch, 3, args.image_size, args.image_size)),
                             dtype=torch.float32))
  targets = synthetic_targets(args.batch, args.image_size, args.num_classes, rng)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = sum(model(images, targets).values())
    loss.backward()
    optimizer.step()
    return loss

  return timed(step, model, args)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, choices=sorted(MODELS))
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--image-size", type=int, default=512)
  p.add_argument("--num-classes", type=int, default=90)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--threads", type=int, default=2)
  print(json.dumps(bench(p.parse_args(argv))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
