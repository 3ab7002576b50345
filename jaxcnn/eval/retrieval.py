"""Image-text retrieval recall@k over a whole split, exact (NumPy), and the zero-shot classifier's pictures.

    recall_at_k(image [N, D], text [N, K, D], text_valid [N, K], ks=(1, 5, 10))
      -> {'i2t_recall@1': ., 't2i_recall@1': ., ...}

Embeddings are L2-normalised, so scores are inner products. Image i owns the valid caption slots of row i
(COCO: 5 per image). Image-to-text: image i scores a hit at k when any of its own captions is among the k
best-scoring captions of the split; text-to-image: each valid caption scores a hit at k when its image is
among the k best-scoring images. Recall@k is the share of hits (the CLIP paper's and open_clip's
`retrieval` benchmark definition; ties are broken against the right answer: a competitor scoring the same
counts as ranked above it). Scores are computed in blocks of queries, so memory stays at one block x the
split, never N x (N K) at once.
"""
import os
from typing import Dict, Sequence

import numpy as np

BLOCK = 1024


def _hits(queries: np.ndarray, keys: np.ndarray, right: np.ndarray, ks: Sequence[int]) -> np.ndarray:
  """[len(ks)] hit counts: queries[q]'s right answers are the keys with right[q, key] True (a block at a time)."""
  hits = np.zeros(len(ks), np.int64)
  for start in range(0, len(queries), BLOCK):
    scores = queries[start:start + BLOCK] @ keys.T                         # [q, M]
    r = right[start:start + BLOCK]
    best_right = np.where(r, scores, -np.inf).max(axis=1, keepdims=True)    # each query's best right answer
    rank = np.sum(np.where(r, -np.inf, scores) >= best_right, axis=1)       # wrong keys scoring at least as high
    hits += np.array([np.sum(rank < k) for k in ks])
  return hits


def recall_at_k(image, text, text_valid, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
  image = np.asarray(image, np.float32)
  n, k_slots, d = np.shape(text)
  valid = np.asarray(text_valid, bool).reshape(-1)
  texts = np.asarray(text, np.float32).reshape(n * k_slots, d)[valid]
  owner = np.repeat(np.arange(n), k_slots)[valid]                           # image of each valid caption
  i2t = _hits(image, texts, np.arange(n)[:, None] == owner[None, :], ks) / max(n, 1)
  t2i = _hits(texts, image, owner[:, None] == np.arange(n)[None, :], ks) / max(len(texts), 1)
  out = {f"i2t_recall@{k}": float(v) for k, v in zip(ks, i2t)}
  out.update({f"t2i_recall@{k}": float(v) for k, v in zip(ks, t2i)})
  return out


def save_matrix(path: str, matrix, row_names, col_names, title: str, xlabel: str, ylabel: str) -> str:
  """A matrix (zero-shot confusion, image-text similarity) as a PNG heat map with its values written in."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  matrix = np.asarray(matrix, np.float64)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  size = max(4.0, 0.45 * max(matrix.shape))
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  im = ax.imshow(matrix, cmap="viridis")
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_xticks(range(matrix.shape[1]), [str(c) for c in col_names], rotation=90, fontsize=7)
  ax.set_yticks(range(matrix.shape[0]), [str(r) for r in row_names], fontsize=7)
  if matrix.size <= 400:
    for (i, j), v in np.ndenumerate(matrix):
      ax.text(j, i, f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}", ha="center", va="center", fontsize=6,
              color="white" if v < matrix.max() / 2 else "black")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
