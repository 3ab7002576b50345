"""The index on disk: one directory, written whole or not at all.

    embeddings.npy   float32 [N, D], every row L2-normalised (inner product = cosine similarity)
    frames.jsonl     N lines, row i describes embedding i: {"file", "time" (s), "frame", "pts", "reason"}
    index.json       format, the model (its source, name and a sha256 of its parameters), the image
                     preparation, the keyframe options, the indexed folder and its files (size, mtime)

A new index is written into a temporary sibling directory and renamed into place; an existing index
is first renamed aside and deleted only once the new one is in place, so a failed or interrupted run
leaves the previous index as it was. A directory that is not an index is never replaced.
"""
import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from jaxcnn.errors import UserError

FORMAT = 1
META, EMBEDDINGS, RECORDS = "index.json", "embeddings.npy", "frames.jsonl"


@dataclasses.dataclass
class Index:
  path: str
  embeddings: np.ndarray   # [N, D] float32 (memory-mapped)
  records: list            # N dicts
  meta: dict

  @property
  def root(self) -> str:
    return self.meta["root"]


def is_index(path: str) -> bool:
  return os.path.isfile(os.path.join(path, META))


def read(path: str) -> Index:
  if not is_index(path):
    raise UserError(f"{path}: not a retrieval index (expected {os.path.join(path, META)}; "
                    f"build one with: python -m jaxcnn.retrieval index FOLDER --index={path} ...)")
  try:
    with open(os.path.join(path, META)) as f:
      meta = json.load(f)
    with open(os.path.join(path, RECORDS)) as f:
      records = [json.loads(line) for line in f if line.strip()]
    embeddings = np.load(os.path.join(path, EMBEDDINGS), mmap_mode="r")
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: damaged retrieval index ({e}); build it again") from None
  if meta.get("format") != FORMAT:
    raise UserError(f"{path}: index format {meta.get('format')} (expected {FORMAT}); build it again")
  if embeddings.dtype != np.float32 or embeddings.ndim != 2 or len(embeddings) != len(records):
    raise UserError(f"{path}: damaged retrieval index ({len(records)} records for embeddings "
                    f"{embeddings.dtype}{list(embeddings.shape)}); build it again")
  return Index(path, embeddings, records, meta)


def check_model(meta: dict, identity: dict, path: str, remedy: str) -> None:
  """Refuses to mix models: the index's model must be the given one (same parameters)."""
  from jaxcnn.retrieval.encoder import describe
  if meta["model"]["params_sha256"] != identity["params_sha256"]:
    raise UserError(f"{path}: index built with {describe(meta['model'])}, not with {describe(identity)}; {remedy}")


def check_target(path: str) -> None:
  """An index may be written at `path`: nothing there yet, or an index (never another directory or a file)."""
  if os.path.exists(path) and not is_index(path):
    raise UserError(f"{path}: exists and is not a retrieval index; choose another --index (nothing was changed)")


def write(path: str, embeddings: np.ndarray, records: list, meta: dict) -> None:
  """Writes the index at `path` atomically (see the module docstring)."""
  path = os.path.abspath(path)
  check_target(path)
  parent = os.path.dirname(path)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  except OSError as e:
    raise UserError(f"{path}: cannot write the index here ({e.strerror or e})") from None
  old = None
  try:
    np.save(os.path.join(tmp, EMBEDDINGS), np.ascontiguousarray(embeddings, np.float32))
    with open(os.path.join(tmp, RECORDS), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(tmp, META), "w") as f:
      json.dump({"format": FORMAT, **meta}, f, indent=1)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "index"))
    os.rename(tmp, path)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if old and not os.path.exists(path):
      os.rename(os.path.join(old, "index"), path)
    if isinstance(e, OSError):
      raise UserError(f"{path}: cannot write the index ({e.strerror or e}); the previous one is kept") from None
    raise
  finally:
    if old:
      shutil.rmtree(old, ignore_errors=True)
