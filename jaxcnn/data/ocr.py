"""Text-recognition datasets: word images labelled with their character strings.

Every example is {'image': uint8 [H, W, C], 'transcript': int32 [L], 'transcript_length': int32 []}:
`transcript` holds the label's characters as indices into the dataset's alphabet (0..K-1, K = the
dataset's `num_classes`, its `class_names` = the alphabet's characters, in order), padded with 0 past
`transcript_length`; L = the dataset's label slots (`max_length`). They are extra fields of the pipeline
(stacked into [B, L] / [B] batches unchanged; eval padding positions hold zeros, length 0). The task
(`jaxcnn.tasks.sequence`) shifts them by one: CTC class c + 1 is character c, class 0 the blank.

Bad labels are refused when a split is opened, with a UserError naming the example (its list file, line
and image): a character outside the alphabet, an empty label, or a label longer than `max_length`. Whether
the model's T output columns can emit a label (CTC needs T >= L + R, R the label's repeated neighbours
such as the 'll' of 'hello', since a blank must separate them; so 2L - 1 in the worst case) is checked by
the task against `ctc_frames(source)`, which every source here provides.

`digit_strings` (embedded, offline): strings of 3-8 scikit-learn digits side by side on a 32 x 128 grey
canvas (black background, white ink), 10,000 'train' strings drawn only from the `digits` 'train' images
and 1,000 'test' strings only from its 'test' images (`sources`: 1,437 / 360 digits). String i of split s is
made from np.random.default_rng([11, s == 'test', i]) alone (so it does not depend on the split size), in
this order: the count n ~ U{3..8}; a base side S ~ U{max(10, S_max - 8)..S_max} with
S_max = min(28, (128 - 3 (n - 1)) // n - 1); per digit: a source image (uniform), its side
S + U{-1..1} (at least 8), the gap before it U{0..3} pixels (none before the first) and a vertical
offset U{-3..3} around the centre (clipped into the canvas); then the left margin of the whole string,
uniform over the positions where it fits. Each 8x8 digit is resized to its side (bilinear, PIL) and
pasted with a per-pixel maximum (touching digits merge their ink). The label is the digit string.

Word-image folders (the user's): `register_word_images(name, ...)` registers a dataset whose split s is
the list file `splits[s]` inside `data.data_dir`. Two conventions of the field:
  label_from='column'    IIIT5K-style lists: each line `path label` (path relative to data_dir, then
                         whitespace, then the label: the rest of the line, stripped);
  label_from='filename'  MJSynth's `annotation_*.txt`: each line `path lexicon_index`; the word is
                         the middle of the file name `<n>_<word>_<lexicon index>.jpg`.
`lowercase=True` lowercases labels before checking them (the CRNN paper's case-insensitive 36
characters). Blank lines and lines starting with '#' are skipped. Images are read with PIL as grey
(channels 1) or RGB and stretched by the pipeline to data.image_size, as CRNN does; data.normalize=
'standard' maps them with mean = std = 0.5 to [-1, 1] (the CRNN PyTorch port's normalisation).
Registered on import:
  mjsynth   Jaderberg et al.'s Synth90k folder (mnt/ramdisk/max/90kDICT32px): annotation_train.txt,
            annotation_val.txt, annotation_test.txt; filename labels, lowercased, 0-9a-z, 25 slots;
  iiit5k    IIIT 5K-Words converted to lists: train.txt, test.txt with `path label` lines; lowercased,
            0-9a-z, 25 slots.
"""
import functools
import os
import string
from typing import Dict, Optional, Sequence

import numpy as np

from jaxcnn.data import sources, transforms
from jaxcnn.errors import UserError

FIELDS = {"image": "image"}
TRANSCRIPT, TRANSCRIPT_LENGTH = "transcript", "transcript_length"
LOWER_ALPHANUMERIC = string.digits + string.ascii_lowercase   # the CRNN paper's 36 characters
LABEL_CONVENTIONS = ("column", "filename")


# --- labels ------------------------------------------------------------------------------------------------
def encode(label: str, alphabet: str, max_length: int, where: str) -> np.ndarray:
  """int32 [max_length]: the label's alphabet indices, padded with 0; UserError naming `where` otherwise."""
  if not label:
    raise UserError(f"{where}: empty label; every word image needs at least one character")
  bad = sorted({c for c in label if c not in alphabet})
  if bad:
    raise UserError(f"{where}: label {label!r} has character(s) {''.join(bad)!r} outside the alphabet "
                    f"{alphabet!r}")
  if len(label) > max_length:
    raise UserError(f"{where}: label {label!r} has {len(label)} characters, more than the {max_length} "
                    f"label slots (max_length)")
  ids = np.zeros(max_length, np.int32)
  ids[:len(label)] = [alphabet.index(c) for c in label]
  return ids


def frames_needed(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """int [N]: CTC frames each label needs, L + R (R: positions where a character repeats its neighbour)."""
  ids, lengths = np.asarray(ids), np.asarray(lengths)
  t = np.arange(1, ids.shape[1])[None, :]
  repeats = np.sum((ids[:, 1:] == ids[:, :-1]) & (t < lengths[:, None]), axis=1)
  return lengths + repeats


def ctc_frames(source) -> Optional[np.ndarray]:
  """Frames each example's label needs (`frames_needed`), for the sources of this module (sliced too); else None."""
  if hasattr(source, "ctc_frames"):
    return source.ctc_frames
  arrays = getattr(source, "arrays", {})
  if TRANSCRIPT in arrays:
    return frames_needed(arrays[TRANSCRIPT], arrays[TRANSCRIPT_LENGTH])
  if isinstance(source, sources.IndexedSource):
    parts = [ctc_frames(s) for s, _ in source.parts]
    if all(p is not None for p in parts):
      return np.concatenate([p[np.asarray(indices)] for p, (_, indices) in zip(parts, source.parts)])
  return None


def decode(ids, length: int, alphabet: Sequence[str]) -> str:
  """The string of the first `length` alphabet indices."""
  return "".join(alphabet[int(i)] for i in np.asarray(ids)[:int(length)])


# --- digit_strings -------------------------------------------------------------------------------------------
CANVAS_HW = (32, 128)
DIGITS_PER_STRING = (3, 8)
SPLIT_SIZES = {"train": 10_000, "test": 1_000}
DIGIT_ALPHABET = string.digits


def digit_string(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, canvas_hw=CANVAS_HW,
                 count=DIGITS_PER_STRING):
  """(uint8 [H, W] canvas, [n] digit labels) of one string drawn with `rng` (see the module doc)."""
  height, width = canvas_hw
  n = int(rng.integers(count[0], count[1] + 1))
  side_max = min(28, (width - 3 * (n - 1)) // n - 1, height)
  base = int(rng.integers(max(10, side_max - 8), side_max + 1))
  picks = []
  for k in range(n):
    index = int(rng.integers(len(images)))
    side = max(8, base + int(rng.integers(-1, 2)))
    gap = int(rng.integers(0, 4)) if k else 0
    dy = int(rng.integers(-3, 4))
    picks.append((index, side, gap, dy))
  total = sum(side + gap for _, side, gap, _ in picks)
  x = int(rng.integers(0, width - total + 1))
  canvas = np.zeros(canvas_hw, np.uint8)
  for index, side, gap, dy in picks:
    x += gap
    top = int(np.clip((height - side) // 2 + dy, 0, height - side))
    digit = _resized_digit(images, index, side)
    region = canvas[top:top + side, x:x + side]
    np.maximum(region, digit, out=region)
    x += side
  return canvas, np.asarray([labels[i] for i, *_ in picks], np.int32)


def _resized_digit(images, index, side):
  return transforms.resize(images[index], side)[..., 0]


@functools.lru_cache(maxsize=1)
def _digit_strings_arrays() -> Dict[str, Dict[str, np.ndarray]]:
  digits = sources.digits_arrays()
  splits = {}
  for code, (split, size) in enumerate(SPLIT_SIZES.items()):
    images, labels = digits[split]
    canvases = np.zeros((size,) + CANVAS_HW + (1,), np.uint8)
    text = np.zeros((size, DIGITS_PER_STRING[1]), np.int32)
    lengths = np.zeros(size, np.int32)
    for i in range(size):
      canvas, label = digit_string(images, labels, np.random.default_rng([11, code, i]))
      canvases[i, ..., 0] = canvas
      text[i, :len(label)] = label
      lengths[i] = len(label)
    arrays = {"image": canvases, TRANSCRIPT: text, TRANSCRIPT_LENGTH: lengths}
    for array in arrays.values():
      array.setflags(write=False)
    splits[split] = arrays
  return splits


DIGIT_STRINGS_INFO = sources.DatasetInfo("digit_strings", 10, CANVAS_HW + (1,), True, "train", "test", None,
                                         fields=FIELDS, class_names=tuple(DIGIT_ALPHABET))
sources.register_embedded(DIGIT_STRINGS_INFO, _digit_strings_arrays)


# --- word-image folders ------------------------------------------------------------------------------------
class WordImageSource:
  """One split of a word-image folder: a list file of `path label` (or MJSynth `path index`) lines."""

  def __init__(self, data_dir: str, list_file: str, alphabet: str, max_length: int, label_from: str,
               lowercase: bool, channels: int, name: str):
    self.root, self.name, self.channels = data_dir, name, channels
    self.list_path = os.path.join(data_dir, list_file)
    if not os.path.isfile(self.list_path):
      raise UserError(f"dataset '{name}': no list file {self.list_path}; data.data_dir must be the folder "
                      f"holding {list_file} (lines 'image_path label')")
    self.paths, self.lines, texts, lengths = [], [], [], []
    with open(self.list_path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
          continue
        parts = line.split(None, 1)
        where = f"{self.list_path} line {number} ({parts[0]})"
        if label_from == "filename":
          stem = os.path.splitext(os.path.basename(parts[0]))[0].split("_")
          if len(stem) < 3:
            raise UserError(f"{where}: an MJSynth image name is '<n>_<word>_<index>.jpg', got {parts[0]!r}")
          label = "_".join(stem[1:-1])
        elif len(parts) < 2:
          raise UserError(f"{where}: want 'image_path label', the line has no label")
        else:
          label = parts[1].strip()
        label = label.lower() if lowercase else label
        texts.append(encode(label, alphabet, max_length, where))
        lengths.append(len(label))
        self.paths.append(parts[0])
        self.lines.append(number)
    self.transcripts = np.stack(texts) if texts else np.zeros((0, max_length), np.int32)
    self.lengths = np.asarray(lengths, np.int32)
    self.ctc_frames = frames_needed(self.transcripts, self.lengths)
    self.extra_fields = {TRANSCRIPT: ((max_length,), np.int32), TRANSCRIPT_LENGTH: ((), np.int32)}

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, index: int) -> str:
    return f"{self.list_path} line {self.lines[index]} ({self.paths[index]})"

  def __getitem__(self, index) -> dict:
    index = int(index)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.root, self.paths[index])
    try:
      with Image.open(path) as im:
        image = np.asarray(im.convert("L" if self.channels == 1 else "RGB"))
    except (OSError, ValueError) as err:
      raise UserError(f"{self.describe(index)}: cannot read the image {path}: {err}") from None
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, TRANSCRIPT: self.transcripts[index], TRANSCRIPT_LENGTH: self.lengths[index]}


def register_word_images(name: str, splits: Dict[str, str], *, alphabet: str = LOWER_ALPHANUMERIC,
                         max_length: int = 25, label_from: str = "column", lowercase: bool = False,
                         image_shape=(32, 100, 1), train_split: str = "train", eval_split: str = "test") -> None:
  """Registers a folder of word images as dataset `name` (`data.name`, with `data.data_dir` = the folder).

  `splits` maps split names to list files inside the folder; `alphabet` is the string of allowed
  characters (its order gives the class indices); see the module doc for the line formats.
  """
  if label_from not in LABEL_CONVENTIONS:
    raise UserError(f"label_from must be one of {LABEL_CONVENTIONS}, got {label_from!r}")
  if not alphabet or len(set(alphabet)) != len(alphabet):
    raise UserError(f"the alphabet must be a non-empty string of distinct characters, got {alphabet!r}")
  if max_length < 1:
    raise UserError(f"max_length must be >= 1, got {max_length}")
  info = sources.DatasetInfo(name, len(alphabet), tuple(image_shape), False, train_split, eval_split, None,
                             splits=tuple(splits), fields=FIELDS, class_names=tuple(alphabet))

  def open_split(split, data_dir):
    return WordImageSource(data_dir, splits[split], alphabet, max_length, label_from, lowercase,
                           int(image_shape[2]), f"{name}:{split}")

  sources.register_source(info, open_split, stats=((0.5,) * image_shape[2], (0.5,) * image_shape[2]))


register_word_images("mjsynth", {"train": "annotation_train.txt", "val": "annotation_val.txt",
                                 "test": "annotation_test.txt"}, label_from="filename", lowercase=True)
register_word_images("iiit5k", {"train": "train.txt", "test": "test.txt"}, lowercase=True)
