"""CLIP ViT-B/32 fine-tuned on COCO captions (Karpathy train + restval, 113k images x 5 captions) from OpenAI's
weights: a GPU / TPU recipe, not a CPU one.

    python -m experiments.run --exp=clip_vit_b32_coco --config.data.download=True \
        --config.finetune.weights=ViT-B-32-quickgelu-openai.safetensors

Recipe (open_clip's fine-tuning practice): the whole model from OpenAI's ViT-B/32 (open_clip `ViT-B-32-quickgelu` /
`openai`, converted on load), AdamW (beta2 0.98, eps 1e-6, weight decay 0.1, none on biases and norms), lr 1e-5
after 200 warmup steps then cosine, global batch 512, 5 epochs (1,100 steps), 224 x 224 random crops of the image
resized to 256 (no flips: they would swap 'left' and 'right' in captions), OpenAI's mean/std, 77-token captions,
one of each image's 5 captions drawn per step, the CLIP loss; evaluated on the Karpathy 5k test split
(eval/t2i_recall@1, the headline, and eval/i2t_recall@k; no zero-shot key: COCO has no classes).

Target: above the same weights' zero-shot COCO 5k figures, which open_clip publishes as t2i ("image retrieval")
R@1 0.3044 and i2t ("text retrieval") R@1 0.5012 (mlfoundations/open_clip, docs/openclip_retrieval_results.csv,
ViT-B-32-quickgelu / openai); fine-tuning on COCO's own captions should raise both. Not run here (no
accelerator, COCO and the weights need downloads).
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
  c.data.scale_crop_ratio = 256 / 224
  c.data.num_threads = 16
  c.contrastive = ml_collections.ConfigDict({"loss": "clip", "chunk": 0, "templates": "", "class_names": (),
                                             "recall_ks": (1, 5, 10), "lock_image": False})
  c.train.steps = 1_100
  c.train.batch_size = 512
  c.train.compute_dtype = "bfloat16"
  c.optim.name = "adamw"
  c.optim.lr = 1e-5
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
  c.optim.weight_decay = 0.1
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 1.0
  c.eval.every = 250
  c.eval.batch_size = 1000
  c.checkpoint.every = 250
  return c
