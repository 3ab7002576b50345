"""Building an index: find the files, pick the frames, embed them in batches, write the index.

Re-indexing into an existing index of the same model and options re-uses the rows of every file whose
size and modification time are unchanged, embeds new and changed files, and drops removed ones.
"""
import dataclasses
import logging
import os
import time

import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.retrieval import frames as frames_lib, store

log = logging.getLogger("jaxcnn")


def _previous(path: str, encoder, settings: dict, rebuild: bool) -> dict:
  """{(file, size, mtime_ns): (embeddings, records)} re-usable from the index already at `path`."""
  if rebuild or not store.is_index(path):
    return {}
  old = store.read(path)
  store.check_model(old.meta, encoder.identity, path, "index with --rebuild to replace it, or choose another --index")
  if {k: old.meta.get(k) for k in settings} != settings:
    log.info("%s: another folder, keyframe or image options; every file is embedded again", path)
    return {}
  rows = {}
  for i, r in enumerate(old.records):
    rows.setdefault(r["file"], []).append(i)
  return {(f["file"], f["size"], f["mtime_ns"]): (np.asarray(old.embeddings[rows[f["file"]]]),
                                                  [old.records[i] for i in rows[f["file"]]])
          for f in old.meta["files"] if f["file"] in rows}


class _Batches:
  """Collects preprocessed frames and embeds them a full batch at a time (results stay on device)."""

  def __init__(self, embed):
    self.embed, self.images, self.records = embed, [], []
    self.chunks, self.chunk_records = [], []

  def add(self, image: np.ndarray, record: dict):
    self.images.append(image)
    self.records.append(record)
    if len(self.images) == self.embed.batch_size:
      self.flush()

  def add_rows(self, embeddings: np.ndarray, records: list):
    self.chunks.append(embeddings)
    self.chunk_records += records

  def flush(self):
    if self.images:
      self.add_rows(self.embed(np.stack(self.images)), self.records)
      self.images, self.records = [], []

  def result(self):
    self.flush()
    if not self.chunks:
      return np.zeros((0, 0), np.float32), []
    return np.concatenate([np.asarray(c) for c in self.chunks]), self.chunk_records


def build_index(folder: str, path: str, encoder, sampling: frames_lib.Sampling, batch_size: int = 64,
                rebuild: bool = False, skip_bad: bool = False, progress: bool = True) -> dict:
  """Indexes every image and video below `folder` into `path`; returns counts for the summary line."""
  from tqdm import tqdm
  if batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {batch_size}")
  store.check_target(path)
  folder = os.path.abspath(folder)
  files = frames_lib.find_media(folder)
  image = {"size": list(encoder.image_hw), "channels": encoder.channels, "resample": encoder.resample,
           "mean": np.asarray(encoder.mean).tolist(), "std": np.asarray(encoder.std).tolist()}
  settings = {"root": folder, "image": image, "keyframes": dataclasses.asdict(sampling)}
  previous = _previous(path, encoder, settings, rebuild)
  batches, entries, bad, reused = _Batches(encoder.image_embedder(batch_size)), [], set(), 0
  t0, c0 = time.time(), time.process_time()
  with tqdm(files, unit="file", disable=not progress, dynamic_ncols=True) as bar:
    for rel in bar:
      stat = os.stat(os.path.join(folder, rel))
      key = (rel, stat.st_size, stat.st_mtime_ns)
      if key in previous:
        batches.add_rows(*previous[key])
        reused += 1
      else:
        try:
          for frame in frames_lib.frames(folder, rel, sampling):
            batches.add(encoder.preprocess(frame.image), frame.record())
        except UserError as e:
          if not skip_bad:
            raise
          log.warning("skipped: %s", e)
          bad.add(rel)
          continue
      entries.append({"file": rel, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
      bar.set_postfix_str(f"{len(batches.chunk_records) + len(batches.records)} frames")
  embeddings, records = _ordered(*batches.result(), files, bad)
  if not records:
    raise UserError(f"{folder}: no frame could be indexed (every file was skipped); the index was not written")
  store.write(path, embeddings, records, {"model": encoder.identity, **settings, "files": entries})
  return {"files": len(entries), "frames": len(records), "reused_files": reused, "skipped_files": len(bad),
          "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}


def _ordered(embeddings, records, files, bad):
  """Rows in file order, then time order, without the rows of skipped files."""
  rank = {f: i for i, f in enumerate(files)}
  keep = [i for i, r in enumerate(records) if r["file"] not in bad]
  keep.sort(key=lambda i: (rank[records[i]["file"]], records[i]["time"], records[i]["frame"]))
  return embeddings[keep], [records[i] for i in keep]
