"""Zero-shot CIFAR-10 with OpenAI's CLIP ViT-B/32 weights: no training, the CLIP paper's 18 CIFAR templates.

    python -m jaxcnn.zeroshot --model=clip_vit_b32 --weights=ViT-B-32-quickgelu-openai.safetensors \
        --data=cifar10 --templates=cifar10 --download

(the weights: open_clip's `ViT-B-32-quickgelu` / `openai` checkpoint, or OpenAI's ViT-B-32.pt read with
weights_only; `jaxcnn/convert/clip.py` converts them). `get_config()` is the evaluation's config, the one the
command builds: model, data (CIFAR-10 test, 10,000 images, resized to 224 and normalised with OpenAI's mean/std),
task 'contrastive' with template set 'cifar10'.

Expected: zero-shot accuracy 0.898 on the CIFAR-10 test split. Source: open_clip's published figure for
ViT-B-32-quickgelu / openai, CIFAR-10 0.8983 (mlfoundations/open_clip, docs/openclip_classification_results.csv;
CLIP paper table 11: 91.3 for ViT-B/32 with its own evaluation code). Our images are resized bilinearly from
32 x 32 (open_clip: bicubic), which can move the figure by a few tenths of a point; not run here (the
weights and CIFAR-10 need a download).
"""
import argparse

from jaxcnn import zeroshot


def get_config():
  args = argparse.Namespace(model="clip_vit_b32", data="cifar10", split="test", templates="cifar10",
                            class_names="", normalize="clip", batch_size=128, data_dir="", download=True)
  return zeroshot.build_config(args)
