"""Top-k search over an index (exact inner product with numpy, or FAISS) and the contact sheet.

Both methods are exact, so they return the same frames: numpy computes every score with one matrix
product and takes the top k with argpartition; FAISS's `knn` (brute-force inner product, its own SIMD
kernels, over the memory-mapped embeddings without copying them into an index) keeps only the best k
per query as it goes. `auto` takes FAISS from FAISS_MIN_ROWS stored rows on (benchmarks/README.md,
"Retrieval tool": it needs less CPU there) and numpy below or when faiss is not installed.
"""
import os
from typing import List, Sequence, Tuple

import numpy as np

from jaxcnn.errors import UserError, unknown

METHODS = ("auto", "exact", "faiss")
FAISS_MIN_ROWS = 20_000


def _faiss():
  try:
    import faiss
  except ImportError:
    return None
  return faiss


def top_k(embeddings: np.ndarray, queries: np.ndarray, k: int, method: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
  """(scores [Q, k], row ids [Q, k]) of the k rows with the largest inner product, best first."""
  if method not in METHODS:
    raise unknown("search method", method, METHODS)
  if k < 1:
    raise UserError(f"-k must be >= 1, got {k}")
  k = min(k, len(embeddings))
  queries = np.ascontiguousarray(queries, np.float32)
  if method == "faiss" or (method == "auto" and len(embeddings) >= FAISS_MIN_ROWS and _faiss()):
    return faiss_top_k(embeddings, queries, k)
  return exact_top_k(embeddings, queries, k)


def exact_top_k(embeddings, queries, k):
  scores = queries @ np.asarray(embeddings, np.float32).T
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  part_scores = np.take_along_axis(scores, part, axis=1)
  order = np.lexsort((part, -part_scores), axis=1)  # by score, ties by row
  return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def faiss_top_k(embeddings, queries, k):
  faiss = _faiss()
  if faiss is None:
    raise UserError("--search=faiss needs FAISS: pip install 'jaxcnn[retrieval]' (faiss-cpu)")
  threads = faiss.omp_get_max_threads()
  # Under 20 queries FAISS scans the rows with one thread per query: spare OpenMP threads would only spin.
  faiss.omp_set_num_threads(max(1, min(threads, len(queries))))
  try:
    scores, ids = faiss.knn(queries, np.ascontiguousarray(embeddings, np.float32), k,
                            metric=faiss.METRIC_INNER_PRODUCT)
  finally:
    faiss.omp_set_num_threads(threads)
  return scores, ids.astype(np.int64)


def format_time(seconds: float) -> str:
  m, s = divmod(float(seconds), 60)
  h, m = divmod(int(m), 60)
  return f"{h:d}:{m:02d}:{s:06.3f}"


def caption(record: dict, score: float) -> str:
  where = "" if record["reason"] == "image" else f" @ {format_time(record['time'])}"
  return f"{record['file']}{where}  {score:.3f}"


def contact_sheet(path: str, rows: Sequence[Tuple[str, List[Tuple[object, str]]]], cell: int = 160) -> str:
  """A PNG with one row per query: its text, then its frames best first, each captioned under it."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default()
  line, pad = 14, 6
  ncol = max(len(frames) for _, frames in rows)
  row_h = line + cell + 2 * line + pad
  sheet = Image.new("RGB", (pad + ncol * (cell + pad), pad + len(rows) * row_h), "white")
  draw = ImageDraw.Draw(sheet)
  for r, (text, frames) in enumerate(rows):
    y = pad + r * row_h
    draw.text((pad, y), _fit(draw, f"query: {text}", font, sheet.width - 2 * pad), fill="black", font=font)
    for c, (image, label) in enumerate(frames):
      x = pad + c * (cell + pad)
      scale = cell / max(image.size)  # small frames enlarged (nearest: pixels stay visible), large ones shrunk
      size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
      thumb = image.resize(size, Image.NEAREST if scale >= 2 else Image.BICUBIC)
      sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + line + (cell - thumb.height) // 2))
      file_part, _, score_part = label.rpartition("  ")
      draw.text((x, y + line + cell + 2), _fit(draw, file_part, font, cell), fill="black", font=font)
      draw.text((x, y + 2 * line + cell + 2), score_part, fill="dimgray", font=font)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sheet.save(path)
  return path


def _fit(draw, text: str, font, width: int) -> str:
  """`text`, shortened from the left with '...' until it fits in `width` pixels."""
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength("..." + text, font=font) > width:
    text = text[1:]
  return "..." + text
