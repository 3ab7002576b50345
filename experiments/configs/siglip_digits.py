"""SigLIP from scratch on digits with captions: clip_tiny_siglip (clip_tiny's towers with a learned logit bias,
temperature initialised at 10 and bias at -10), the pairwise sigmoid loss, zero-shot eval with unseen templates.

    python -m experiments.run --exp=siglip_digits

Expected: eval/zeroshot_accuracy >= 0.8 on the 360 held-out digits; measured 0.981 after 500 steps (0.958 at
step 250), 269 CPU-s on 2 shared cores (README, "Image-text models"); plots/ holds the zero-shot confusion matrix
of each eval. Everything but the loss and the model's
bias is clip_digits' recipe. Source of the method: Zhai et al. 2023 (SigLIP, "Sigmoid Loss for Language Image
Pre-Training"), open_clip's SigLipLoss.
"""
from experiments.configs.clip_digits import contrastive_digits_config


def get_config():
  return contrastive_digits_config("siglip")
