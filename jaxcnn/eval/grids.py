"""PNG grids of images (samples, reconstructions, interpolations) with PIL."""
import os
from typing import Sequence, Tuple

import numpy as np


def to_uint8(images, value_range: Tuple[float, float]) -> np.ndarray:
  """Float images in `value_range` -> uint8 [0, 255] (values outside are clipped)."""
  lo, hi = value_range
  x = (np.asarray(images, np.float32) - lo) / (hi - lo)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(images, ncol: int, pad: int = 2, scale: int = 1) -> np.ndarray:
  """[N, H, W, C] uint8 -> one [rows * (H + pad) + pad, ...] image, row-major, on a white background."""
  images = np.asarray(images)
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  ncol = max(1, min(ncol, n))
  nrow = -(-n // ncol)
  out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncol)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[y:y + h, x:x + w] = images[i]
  return out


def save_grid(path: str, images, ncol: int, value_range: Tuple[float, float] = (-1.0, 1.0),
              min_cell: int = 48) -> str:
  """Writes `images` [N, H, W, C] (C = 1 or 3) as a PNG grid; small images are enlarged (nearest) for viewing."""
  from PIL import Image
  images = to_uint8(images, value_range)
  scale = max(1, -(-min_cell // images.shape[1]))
  g = grid(images, ncol, scale=scale)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
  return path


def save_rows(path: str, rows: Sequence, value_range: Tuple[float, float] = (-1.0, 1.0)) -> str:
  """One grid row per [n, H, W, C] array in `rows` (all the same n): e.g. originals over reconstructions."""
  n = len(rows[0])
  return save_grid(path, np.concatenate([np.asarray(r) for r in rows], axis=0), ncol=n, value_range=value_range)
