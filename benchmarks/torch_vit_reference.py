"""PyTorch ViT train step with timm's `VisionTransformer` (the implementation jaxcnn's ViT matches).

    python benchmarks/torch_vit_reference.py --model=vit_tiny_patch4_32 --batch=128 --image-size=32

Same step, flags and JSON line as benchmarks/torch_reference.py (SGD, float32,
2 threads, channels_last input), which builds torchvision's ViT; this one
builds timm's with the same shape (patch 4, width 192, depth 12, 3 heads, MLP
768, class token, exact GELU, LayerNorm eps 1e-6). On this machine timm's
model used ~20% less CPU time per step than torchvision's, so it is the
stronger PyTorch baseline for the ViT comparison.
"""
import sys

import torch_reference  # benchmarks/torch_reference.py (this directory is on sys.path)
from timm.models.vision_transformer import VisionTransformer

SHAPES = {
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch4_32": dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6),
}


def main(argv=None):
  torch_reference.MODELS.clear()
  for name, shape in SHAPES.items():
    torch_reference.MODELS[name] = lambda n, shape=shape: VisionTransformer(num_classes=n, **shape)
  return torch_reference.main(argv)


if __name__ == "__main__":
  sys.exit(main())
