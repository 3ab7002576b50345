"""CLIP ViT-B/32 trained from scratch on COCO captions (Karpathy train + restval, 113k images x 5 captions):
a GPU / TPU recipe, not a CPU one.

    python -m experiments.run --exp=clip_vit_b32_coco --config.data.download=True

Recipe (open_clip's training defaults, scaled to COCO): AdamW (beta2 0.98, eps 1e-6, weight decay 0.2, none on
biases, norms and the temperature), lr 5e-4 with 2,000 warmup steps then cosine, global batch 1,024, 30 epochs
(~3,300 steps), 224 x 224 random crops of the image resized to 256 (no flips: they would swap 'left' and
'right' in captions), OpenAI's mean/std, 77-token captions, one of each image's 5 captions drawn per step; evaluated on the Karpathy 5k test split.

Target: t2i recall@1 >= 0.15 and i2t recall@1 >= 0.20 on COCO 5k test. Source: training CLIP on COCO alone is
data-starved; open_clip's ViT-B-32 trained on CC3M (3M pairs, ~30 epochs) reaches about 0.2 COCO t2i R@1
(mlfoundations/open_clip docs/clip_conceptual_captions.md and the retrieval results table), and models
trained on 100k COCO pairs alone land lower; the target above is our estimate from those figures, not a
published number, and has not been run here (no accelerator). The zero-shot key is absent (COCO has no
classes): the headline is eval/t2i_recall@1.
"""
import ml_collections

from experiments.configs.common import base_config


def get_config():
  c = base_config()
  c.task = "contrastive"
  c.model.name = "clip_vit_b32"
  c.data.name = "coco_captions"
  c.data.train_split = "train+restval"
  c.data.eval_split = "test"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.normalize = "clip"
  c.data.context_length = 77
  c.data.augment = "scale_crop"
  c.data.scale_crop_ratio = 1.14   # 256 / 224: resize to 256, random 224 crop
  c.data.num_threads = 16
  c.contrastive = ml_collections.ConfigDict({"loss": "clip", "chunk": 0, "templates": "", "class_names": (),
                                             "recall_ks": (1, 5, 10), "lock_image": False})
  c.train.steps = 3_300
  c.train.batch_size = 1024
  c.train.compute_dtype = "bfloat16"
  c.optim.name = "adamw"
  c.optim.lr = 5e-4
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
  c.optim.weight_decay = 0.2
  c.optim.warmup_steps = 2_000
  c.optim.grad_clip_norm = 1.0
  c.eval.every = 500
  c.eval.batch_size = 1000
  c.checkpoint.every = 500
  return c
