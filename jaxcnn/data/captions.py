"""Image-text datasets: `digits_captions` (offline), the user's pairs (CSV / JSONL / folder) and tfds `coco_captions`.

An example is {'image': uint8 [H, W, C], 'captions': its caption strings (1 or more), 'label': class} ('label'
only where the dataset has classes). The field 'captions' is of kind 'text': the pipeline tokenizes it on the
host with CLIP's tokenizer (`jaxcnn.data.tokenizer`, data.context_length ids, default 77; a caption longer than
that is truncated as open_clip does: the first ids kept, the last one replaced by the end-of-text token) and
batches hold `captions` int32 [b, K, L]: K = data.max_captions slots (0: the dataset's `max_captions`), an
image's captions in the first slots in order (those past K are dropped), all-zero rows for empty slots; slot 0
is always a caption. The `contrastive` task draws one caption per image and step.

`digits_captions` (embedded, 10 classes, no files, no network): scikit-learn's digits, the same pixels and the
same 'train' (1,437) / 'test' (360) split as `digits` (see `sources`), each image with K = 5 captions composed
from TRAIN_TEMPLATES: templates with the class as a word ("a handwritten seven") or a numeral ("the digit 7"),
five distinct ones per image drawn with np.random.default_rng([11, split]) (train 0, test 1) in example order.
The images are 8x8x1: set data.image_size (bilinear upscaling) and data.channels=3 for a CLIP image tower.
Its zero-shot templates (`jaxcnn.eval.templates`, name 'digits') share no template with TRAIN_TEMPLATES, so
eval/zeroshot_accuracy measures generalisation to phrasing never seen in training.

The user's pairs, registered by name (point data.data_dir at the folder):
  image_text_csv     data_dir/{train,test}.csv: open_clip's CSV convention: tab-separated, a header with the
                     columns 'filepath' (the image, absolute or relative to the CSV's folder) and 'title' (its
                     caption);
  image_text_jsonl   data_dir/{train,test}.jsonl: one {"filepath": ..., "title": ...} object per line;
  image_text_folder  data_dir/{train,test}/: every image (.jpg .jpeg .png .bmp .gif .webp) with a text file of
                     the same name (cat.jpg + cat.txt) holding its captions, one per non-empty line.
Rows of a CSV / JSONL naming the same image are one example with several captions (COCO-style files list an
image once per caption), in order of first appearance. Other separators or column names:
`register_image_text(name, kind='csv', separator=',', image_key='image', caption_key='caption')`. A missing
file, a missing column or an image without captions is a UserError naming it; an image that cannot be decoded
is a UserError naming its file when it is read.

`coco_captions` (tfds `coco_captions/2014`, online: `python -m jaxcnn.data.prepare coco_captions`): COCO 2014
with Karpathy and Li's splits 'train' (82,783), 'restval' (30,504), 'val' (5,000) and 'test' (5,000, the default
eval split, the usual 5k retrieval benchmark); 5 caption slots (a few images have 6 or 7: the first 5 are kept,
as the Karpathy benchmark does).
"""
import csv
import functools
import json
import os
from typing import Dict, List

import numpy as np

from jaxcnn.data import sources
from jaxcnn.errors import UserError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {w}: the class as a word, {n}: as a numeral.
TRAIN_TEMPLATES = (
    "a handwritten {w}", "the digit {n}", "a photo of the number {w}", "a scanned {w}",
    "the number {n}, written by hand", "an image of a {w}", "a small grey picture of the digit {w}", "{n}",
    "a blurry {n}", "someone wrote a {w}", "a pixelated handwritten digit {n}", "the figure {w} in pen",
    "a low resolution {w}", "digit: {n}",
)
DIGITS_CAPTIONS_PER_IMAGE = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
CAPTION_FIELDS = {"image": "image", "captions": "text"}


def digit_caption(template: str, label: int) -> str:
  return template.format(w=DIGIT_WORDS[label], n=str(label))


def digits_captions(labels: np.ndarray, seed: int) -> np.ndarray:
  """[N, 5] captions: per example, 5 distinct TRAIN_TEMPLATES (drawn in example order) filled with its class."""
  rng = np.random.default_rng([11, seed])
  out = np.empty((len(labels), DIGITS_CAPTIONS_PER_IMAGE), dtype=object)
  for i, label in enumerate(labels):
    picks = rng.choice(len(TRAIN_TEMPLATES), DIGITS_CAPTIONS_PER_IMAGE, replace=False)
    out[i] = [digit_caption(TRAIN_TEMPLATES[t], int(label)) for t in picks]
  return out


@functools.lru_cache(maxsize=1)
def _digits_captions_arrays() -> Dict[str, Dict[str, np.ndarray]]:
  splits = {}
  for split, (images, labels) in sources.digits_arrays().items():
    captions = digits_captions(labels, {"train": 0, "test": 1}[split])
    captions.setflags(write=False)
    splits[split] = {"image": images, "label": labels, "captions": captions}
  return splits


DIGITS_INFO = sources.DatasetInfo("digits_captions", 10, (8, 8, 1), True, "train", "test", None,
                                  fields={**CAPTION_FIELDS, "label": "class"}, class_names=DIGIT_WORDS,
                                  max_captions=DIGITS_CAPTIONS_PER_IMAGE)
sources.register_embedded(DIGITS_INFO, _digits_captions_arrays)


# --- the user's pairs -------------------------------------------------------------------------------------------
def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file; a UserError naming the file when it cannot be read or decoded."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except FileNotFoundError:
    raise UserError(f"image file not found: {path}") from None
  except (UnidentifiedImageError, OSError, ValueError) as err:
    raise UserError(f"cannot decode image {path}: {err}; want a JPEG, PNG, BMP, GIF or WebP file") from None


class PairsSource:
  """Random access to (image file, captions) pairs: {'image': uint8 [H, W, 3], 'captions': [str, ...]}."""

  def __init__(self, paths: List[str], captions: List[List[str]], name: str):
    self.paths, self.captions, self.name = paths, captions, name

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index) -> dict:
    index = int(index)
    return {"image": read_image(self.paths[index]), "captions": list(self.captions[index])}

  def describe(self, index: int) -> str:
    return f"image {self.paths[int(index)]}"


def _grouped(rows, where: str) -> PairsSource:
  """(image path, caption) rows -> one example per image with its captions in order."""
  order, captions = [], {}
  for path, caption in rows:
    if path not in captions:
      order.append(path)
      captions[path] = []
    if caption.strip():
      captions[path].append(caption.strip())
  empty = [p for p in order if not captions[p]]
  if empty:
    raise UserError(f"{where}: image {empty[0]} has no caption (every image needs at least one)")
  if not order:
    raise UserError(f"{where} lists no image")
  return PairsSource(order, [captions[p] for p in order], where)


def _table_rows(path: str, kind: str, separator: str, image_key: str, caption_key: str):
  folder = os.path.dirname(os.path.abspath(path))
  try:
    with open(path, newline="", encoding="utf-8") as f:
      if kind == "csv":
        records = list(csv.DictReader(f, delimiter=separator))
      else:
        records = [json.loads(line) for line in f if line.strip()]
  except FileNotFoundError:
    raise UserError(f"image-text {kind.upper()} file not found: {path}") from None
  except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
    raise UserError(f"cannot read {path}: {err}") from None
  for n, record in enumerate(records):
    missing = [k for k in (image_key, caption_key) if not isinstance(record, dict) or record.get(k) is None]
    if missing:
      raise UserError(f"{path}: row {n + 1} lacks the column(s) {missing} (columns: image '{image_key}', caption "
                      f"'{caption_key}'{', separator ' + repr(separator) if kind == 'csv' else ''})")
    yield os.path.join(folder, str(record[image_key])), str(record[caption_key])


def _folder_rows(folder: str):
  if not os.path.isdir(folder):
    raise UserError(f"image-text folder not found: {folder}")
  for name in sorted(os.listdir(folder)):
    stem, suffix = os.path.splitext(name)
    if suffix.lower() not in IMAGE_SUFFIXES:
      continue
    text = os.path.join(folder, stem + ".txt")
    if not os.path.exists(text):
      raise UserError(f"{os.path.join(folder, name)} has no caption file {text}")
    with open(text, encoding="utf-8") as f:
      lines = [line for line in f.read().splitlines() if line.strip()] or [""]
    for line in lines:
      yield os.path.join(folder, name), line


def register_image_text(name: str, kind: str = "csv", *, separator: str = "\t", image_key: str = "filepath",
                        caption_key: str = "title", image_shape=(224, 224, 3), max_captions: int = 5,
                        splits=("train", "test")) -> sources.DatasetInfo:
  """Registers the user's image-text pairs as dataset `name`: data_dir/<split>.csv | .jsonl, or data_dir/<split>/."""
  if kind not in ("csv", "jsonl", "folder"):
    raise UserError(f"image-text files are 'csv', 'jsonl' or 'folder', got {kind!r}")
  info = sources.DatasetInfo(name, 0, tuple(image_shape), False, splits[0], splits[-1], None, splits=tuple(splits),
                             fields=CAPTION_FIELDS, max_captions=max_captions)

  def open_split(split, data_dir):
    if not data_dir:
      raise UserError(f"dataset '{name}' reads the user's files: set data.data_dir to the folder holding "
                      f"{split}.{kind if kind != 'folder' else ''}".rstrip("."))
    if kind == "folder":
      return _grouped(_folder_rows(os.path.join(data_dir, split)), os.path.join(data_dir, split))
    path = os.path.join(data_dir, f"{split}.{kind}")
    return _grouped(_table_rows(path, kind, separator, image_key, caption_key), path)

  sources.register_source(info, open_split)
  return info


for _kind in ("csv", "jsonl", "folder"):
  register_image_text(f"image_text_{_kind}", _kind)


# --- COCO captions (tfds) ----------------------------------------------------------------------------------------
def coco_convert(example: dict, index: int) -> dict:
  image = np.asarray(example["image"], np.uint8)
  texts = example["captions"]["text"]
  captions = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in np.asarray(texts).ravel()]
  if not captions:
    raise UserError(f"example {index} of tfds coco_captions has no caption")
  return {"image": image if image.ndim == 3 else image[..., None], "captions": captions}


COCO_INFO = sources.DatasetInfo("coco_captions", 0, (224, 224, 3), False, "train", "test", "coco_captions/2014",
                                splits=("train", "restval", "val", "test"), fields=CAPTION_FIELDS, max_captions=5)
sources.register_tfds_dataset(COCO_INFO, coco_convert)
