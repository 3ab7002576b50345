"""Clip classification (task `video`): the classification task on clips [B, T, H, W, C], plus a picture.

Training and eval are `Classification`'s unchanged (cross-entropy, eval/accuracy; the model, e.g.
`cnn_lstm` of `jaxcnn.models.video`, takes the clips as the batch's 'image', or cached frame features,
see `jaxcnn.video_features`). At the end of a run `plots/clips.png` shows the first clips of the eval
split frame by frame, each row titled with its label and the model's prediction. CutMix is refused (it
cuts a box out of an image; Mixup blends whole clips and works).
"""
import os

import jax
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.tasks.classification import Classification

CLIPS_SHOWN = 6


class VideoClassification(Classification):

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, data_info, axis_name)
    if float(config.train.get("cutmix_alpha", 0.0)) > 0:
      raise UserError("train.cutmix_alpha > 0: CutMix cuts boxes out of images, not clips; use train.mixup_alpha")
    self.class_names = tuple(data_info.class_names) or tuple(str(c) for c in range(self.num_classes))

  def finish(self, variables, workdir: str, evaluate):
    if jax.process_index() != 0:
      return {}
    from jaxcnn import data as data_lib  # pylint: disable=g-import-not-at-top
    spec = data_lib.resolve(self.config.data)
    if spec.frames == 0 or self.input_field != "image":
      return {}   # no frames to draw (an image dataset, or cached features)
    batch = next(iter(data_lib.eval_iterator(self.config.data, global_batch_size=CLIPS_SHOWN)))
    logits = self.model.apply(variables, batch["image"], train=False)
    predictions = np.asarray(jax.device_get(logits)).argmax(-1)
    mean, std = spec.mean_std()
    frames = np.clip(batch["image"] * std + mean, 0, 1)   # [K, T, H, W, C] back to [0, 1]
    path = plot_clips(frames, batch["label"], predictions, self.class_names, os.path.join(workdir, "plots"))
    return {"clips_plot": path}


def plot_clips(frames, labels, predictions, class_names, folder: str) -> str:
  """Writes folder/clips.png: one row per clip [T, H, W, C] in [0, 1], titled 'label X, predicted Y'."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  k, t = frames.shape[:2]
  fig, axes = plt.subplots(k, t, figsize=(1.1 * t, 1.3 * k), squeeze=False)
  for i in range(k):
    for j in range(t):
      ax = axes[i, j]
      image = frames[i, j]
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    right = labels[i] == predictions[i]
    axes[i, 0].set_title(f"label {class_names[labels[i]]}, predicted {class_names[predictions[i]]}",
                         fontsize=7, loc="left", color="black" if right else "red")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "clips.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
