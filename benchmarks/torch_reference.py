"""PyTorch twin of `python -m jaxcnn.bench`: one SGD train step of the same architecture.

    python benchmarks/torch_reference.py --model=resnet18_cifar --batch=128 --image-size=32

Same work as the JAX bench: random NHWC-equivalent images (channels_last), random
labels, forward in train mode, softmax cross-entropy, backward, SGD (lr 0.01,
momentum 0.9), float32, `torch.set_num_threads(2)` like XLA:CPU on this machine.
Prints one JSON line with the median step time and images/s. A benchmark-only
script: torch is not a dependency of jaxcnn.

Segmentation models (`SEGMENTATION`, e.g. deeplabv3_resnet50, no auxiliary
head) take random per-pixel labels with about 5% of the pixels at the ignore
label 255 and the per-pixel cross-entropy of their 'out' logits with
`ignore_index=255` (torchvision's segmentation reference loss without the aux
term); their JAX twin is `python -m jaxcnn.bench` (the segmentation task's step).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torchvision


def resnet18_cifar(num_classes):
  """torchvision ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool), as jaxcnn's resnet18_cifar."""
  model = torchvision.models.resnet18(num_classes=num_classes)
  model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  model.maxpool = torch.nn.Identity()
  return model


def vit_tiny_patch4_32(num_classes):
  """torchvision ViT with jaxcnn's vit_tiny_patch4_32 shape: patch 4, width 192, depth 12, 3 heads, MLP 768."""
  return torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=3,
                                              hidden_dim=192, mlp_dim=768, num_classes=num_classes)


MODELS = {
    "resnet18_cifar": resnet18_cifar,
    "resnet50": lambda n: torchvision.models.resnet50(num_classes=n),
    "mobilenet_v2": lambda n: torchvision.models.mobilenet_v2(num_classes=n),
    "vit_tiny_patch4_32": vit_tiny_patch4_32,
    "deeplabv3_resnet50": lambda n: torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=n, aux_loss=False),
}
SEGMENTATION = {"deeplabv3_resnet50"}
IGNORE_LABEL = 255


def bench(args) -> dict:
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = MODELS[args.model](args.num_classes).to(memory_format=torch.channels_last).train()
  images = torch.randn(args.batch, args.channels, args.image_size, args.image_size)
  images = images.contiguous(memory_format=torch.channels_last)
  segmentation = args.model in SEGMENTATION
  label_shape = (args.batch, args.image_size, args.image_size) if segmentation else (args.batch,)
  labels = torch.randint(0, args.num_classes, label_shape)
  if segmentation:
    labels[torch.rand(label_shape) < 0.05] = IGNORE_LABEL
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
  forward = (lambda x: model(x)["out"]) if segmentation else model

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  return timed(step, model, args)


def timed(step, model, args) -> dict:
  """Runs `step` (returning the loss) args.warmup + args.steps times; the JSON record of the timed steps."""
  for _ in range(args.warmup):
    step()
  times, cpu_times = [], []
  for _ in range(args.steps):
    t, c = time.perf_counter(), time.process_time()
    loss = step()
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  median = statistics.median(times)
  return {"model": args.model, "framework": "torch", "batch": args.batch, "image_size": args.image_size,
          "threads": torch.get_num_threads(), "step_ms_median": round(median * 1e3, 3),
          "step_ms_min": round(min(times) * 1e3, 3), "images_per_s": round(args.batch / median, 2),
          "cpu_s_per_step": round(statistics.median(cpu_times), 3),
          "loss": loss.item(), "param_count": sum(p.numel() for p in model.parameters())}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, choices=sorted(MODELS))
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=2)
  print(json.dumps(bench(p.parse_args(argv))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
