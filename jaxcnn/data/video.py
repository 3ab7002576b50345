"""Video datasets: examples whose image is a clip, uint8 [T, H, W, C] (`DatasetInfo.frames` > 0).

The pipeline (see its module doc) asks for T = data.frames frames (0: the dataset's default) and
samples them uniformly from each clip: frame floor((i + 0.5) * n / T) of the clip's n, i = 0..T-1
(the centres of T equal segments, TSN's test-time sampling; all of them when n = T). A clip with
fewer than T frames is a UserError naming it ("... has 5 frames, fewer than data.frames=8 ...");
no frame is repeated to fill it.

`moving_digits` (embedded, offline; 10 classes): clips of T = 8 frames of 32 x 32 x 1 showing two
scikit-learn digits of different classes, each moving with constant velocity and bouncing off the
canvas edges (tfds' `moving_sequence` motion). The first digit is on screen in frames
0 .. T - s - 1, the second in frames s .. T - 1, s = T // 2 - T // 8 (T = 8: frames 0-4 and 3-7,
two frames together). The label is the class of the digit that appears FIRST. Both digits are on
screen equally long and move alike, so the frames without their order show two digits and no hint
of which came first: a model that averages over time can do no better than guessing one of the two
(~50%), while one that reads the frames in order can reach ~100%. Clip i of split s is made from
np.random.default_rng([13, s == 'test', i]) alone, in this order: the first digit's source image
(uniform), the second's (uniform, drawn again until its class differs); then per digit: its side
U{10..14} px, its start (top, left) uniform over the positions where it fits, its direction
U[0, 2 pi) and speed U[1, 3) px per frame. Each 8x8 digit is resized to its side (bilinear, PIL) and
pasted at its rounded position with a per-pixel maximum. 4,000 'train' clips use only the `digits`
'train' images and 1,000 'test' clips only its 'test' images (the split of `digits`: 1,437 / 360).
Examples: {'image': uint8 [8, 32, 32, 1], 'label': first digit's class, 'digits': int32 [2]
(first, second class)}; `digits` is an extra field (in the batches unchanged).

Video folders (the user's): `register_video_folder(name, root)` registers a dataset laid out as

    <data_dir>/<split>/<class name>/<video file>      e.g. clips/train/jumping/0001.mp4

whose classes are the sorted subfolder names of the first split in `root` (fixed at registration,
so class indices never depend on what another split holds; a class folder another split has and
this one lacks is a UserError). Files with the given extensions are decoded with PyAV (every frame,
then T sampled as above, converted to RGB); a file PyAV cannot open or decode, or one with no video
stream, is a UserError naming it. Normalisation ('standard') uses ImageNet's mean and std, as video
CNNs initialised from ImageNet do.

`ucf101` (tfds, online: `data.download=True` or `python -m jaxcnn.data.prepare ucf101`): UCF101's
13,320 clips of 101 actions (Soomro et al. 2012), tfds split 1 ('train' 9,537 / 'test' 3,783),
frames 256 x 256 as tfds stores them; default T = 16, ImageNet statistics.
"""
import functools
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from jaxcnn.data import sources, transforms
from jaxcnn.errors import UserError

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


# --- frame sampling ----------------------------------------------------------------------------------------
def frame_indices(available: int, frames: int) -> np.ndarray:
  """The T = `frames` indices sampled from `available` frames: floor((i + 0.5) * n / T) (see the module doc)."""
  return ((np.arange(frames) + 0.5) * available / frames).astype(np.int64)


def too_few_frames(what: str, available: int, frames: int) -> UserError:
  return UserError(f"{what} has {available} frame(s), fewer than data.frames={frames}; allowed: data.frames <= "
                   f"{available} for this clip (clips are never padded), or leave the clip out")


def sample_frames(clip, frames: int, what: str) -> np.ndarray:
  """T frames of a clip [n, H, W, C] uniformly (see `frame_indices`); fewer than T: a UserError naming it."""
  clip = np.asarray(clip)
  if clip.ndim != 4:
    raise UserError(f"{what}: a clip must be [frames, height, width, channels], got shape {clip.shape}")
  if len(clip) < frames:
    raise too_few_frames(what, len(clip), frames)
  return clip if len(clip) == frames else clip[frame_indices(len(clip), frames)]


def check_clip_lengths(source, frames: int, what) -> None:
  """Clips held in memory ([N, T, H, W, C] `images`) share one length: too short ones are refused before any
  is read, naming the first (`what(index)` names an example). Other sources are checked as each clip is read."""
  images = getattr(source, "images", None)
  if isinstance(images, np.ndarray) and images.ndim == 5 and len(images) and images.shape[1] < frames:
    raise too_few_frames(f"{what(0)} (as every clip of the split)", images.shape[1], frames)


def read_clip(source, index: int, frames: int, what: str) -> dict:
  """Example `index` of a video source with its clip cut to `frames` frames.

  A source with a `read_clip(index, frames)` method (video files: only the sampled frames are converted)
  is asked for them; other sources give their whole clip as 'image' and it is sampled here.
  """
  reader = getattr(source, "read_clip", None)
  if reader is not None:
    return reader(int(index), frames)
  example = source[index]
  return {**example, "image": sample_frames(example["image"], frames, what)}


# --- moving_digits -----------------------------------------------------------------------------------------
MOVING_CANVAS = 32
MOVING_FRAMES = 8
MOVING_SIDE = (10, 14)
MOVING_SPEED = (1.0, 3.0)
MOVING_SIZES = {"train": 4000, "test": 1000}
MOVING_SEED = 13


def visible_frames(frames: int) -> Tuple[range, range]:
  """The frames on which the first and the second digit are shown (equally many; see the module doc)."""
  shift = frames // 2 - frames // 8
  return range(0, frames - shift), range(shift, frames)


def bounce(start: np.ndarray, velocity: np.ndarray, steps: np.ndarray, limit: float) -> np.ndarray:
  """Positions start + velocity * t reflected into [0, limit] (a ball bouncing off two walls): [len(steps), 2]."""
  position = start[None, :] + velocity[None, :] * steps[:, None]
  if limit <= 0:
    return np.zeros_like(position)
  folded = np.mod(position, 2 * limit)
  return np.where(folded > limit, 2 * limit - folded, folded)


def moving_digits_clip(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                       frames: int = MOVING_FRAMES, canvas: int = MOVING_CANVAS) -> Tuple[np.ndarray, np.ndarray]:
  """One clip (uint8 [T, S, S, 1]) and its two digit classes (first, second) drawn from `rng` (module doc order)."""
  first = int(rng.integers(len(images)))
  second = int(rng.integers(len(images)))
  while labels[second] == labels[first]:
    second = int(rng.integers(len(images)))
  clip = np.zeros((frames, canvas, canvas, 1), np.uint8)
  for index, shown in zip((first, second), visible_frames(frames)):
    side = int(rng.integers(MOVING_SIDE[0], MOVING_SIDE[1] + 1))
    start = rng.uniform(0, canvas - side, size=2)
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*MOVING_SPEED)
    velocity = speed * np.array([np.sin(angle), np.cos(angle)])
    digit = transforms.resize(images[index], side)[..., 0]
    path = np.rint(bounce(start, velocity, np.arange(len(shown), dtype=np.float64), canvas - side)).astype(int)
    for t, (top, left) in zip(shown, path):
      window = clip[t, top:top + side, left:left + side, 0]
      np.maximum(window, digit, out=window)
  return clip, np.array([labels[first], labels[second]], np.int32)


@functools.lru_cache(maxsize=1)
def moving_digits_splits() -> Dict[str, Dict[str, np.ndarray]]:
  """{split: {'image': uint8 [N, 8, 32, 32, 1], 'label': int64 [N], 'digits': int32 [N, 2]}} (module doc)."""
  digits = sources.digits_arrays()
  out = {}
  for split, size in MOVING_SIZES.items():
    images, labels = digits[split]
    clips, pairs = zip(*(moving_digits_clip(images, labels, np.random.default_rng([MOVING_SEED, split == "test", i]))
                         for i in range(size)))
    arrays = {"image": np.stack(clips), "digits": np.stack(pairs)}
    arrays["label"] = arrays["digits"][:, 0].astype(np.int64)
    for array in arrays.values():
      array.setflags(write=False)
    out[split] = arrays
  return out


MOVING_INFO = sources.DatasetInfo("moving_digits", 10, (MOVING_CANVAS, MOVING_CANVAS, 1), True, "train", "test",
                                  None, frames=MOVING_FRAMES, class_names=tuple(str(d) for d in range(10)))
sources.register_embedded(MOVING_INFO, moving_digits_splits)


# --- video folders (PyAV) ----------------------------------------------------------------------------------
def decode_video(path: str, frames: int, what: str) -> np.ndarray:
  """uint8 RGB [frames, H, W, 3]: `frames` frames sampled uniformly from every frame of the file's first video
  stream (PyAV); UserErrors name the file when it cannot be read or has too few frames."""
  import av  # pylint: disable=g-import-not-at-top
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise UserError(f"{what}: no video stream in the file")
      decoded = list(container.decode(video=0))   # av.VideoFrame (YUV): only the sampled ones become RGB
  except (av.FFmpegError, OSError, ValueError) as err:
    raise UserError(f"{what}: cannot decode it with PyAV ({getattr(err, 'strerror', None) or err})") from None
  if len(decoded) < frames:
    raise too_few_frames(what, len(decoded), frames)
  return np.stack([decoded[i].to_ndarray(format="rgb24") for i in frame_indices(len(decoded), frames)])


class VideoFolderSource:
  """One split of a video folder: <root>/<split>/<class>/<file>, labels by the registered class names."""
  extra_fields = {}   # none (said here so the pipeline does not decode a video to find out)

  def __init__(self, root: str, split: str, class_names: Sequence[str], extensions: Sequence[str], name: str):
    self.root, self.name = os.path.join(root, split), name
    if not os.path.isdir(self.root):
      raise UserError(f"dataset '{name}': no folder {self.root} (want <data_dir>/<split>/<class>/<video files>)")
    index = {c: i for i, c in enumerate(class_names)}
    folders = sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
    strangers = [d for d in folders if d not in index]
    if strangers:
      raise UserError(f"dataset '{name}': class folder(s) {strangers} in {self.root} are not among its classes "
                      f"{list(class_names)} (taken from the first split when it was registered)")
    self.paths, labels = [], []
    for folder in folders:
      for file in sorted(os.listdir(os.path.join(self.root, folder))):
        if file.lower().endswith(tuple(extensions)):
          self.paths.append(os.path.join(self.root, folder, file))
          labels.append(index[folder])
    if not self.paths:
      raise UserError(f"dataset '{name}': no video files ({', '.join(extensions)}) in the class folders of {self.root}")
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, index: int) -> str:
    return f"video {self.paths[index]} (dataset '{self.name}')"

  def read_clip(self, index: int, frames: int) -> dict:
    return {"image": decode_video(self.paths[index], frames, self.describe(index)), "label": int(self.labels[index])}

  def __getitem__(self, index) -> dict:
    """The whole clip (every frame); the pipeline uses `read_clip`, which converts only the sampled frames."""
    index = int(index)
    import av  # pylint: disable=g-import-not-at-top
    try:
      with av.open(self.paths[index]) as container:
        clip = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except (av.FFmpegError, OSError, ValueError) as err:
      raise UserError(f"{self.describe(index)}: cannot decode it with PyAV ({getattr(err, 'strerror', None) or err})") from None
    return {"image": clip, "label": int(self.labels[index])}


def register_video_folder(name: str, root: str, *, frames: int = 16, image_size: int = 112,
                          splits: Sequence[str] = ("train", "test"),
                          extensions: Sequence[str] = VIDEO_EXTENSIONS) -> sources.DatasetInfo:
  """Registers the video folder `root` (layout in the module doc) as dataset `name`; returns its info.

  `data.data_dir` may point at another folder of the same layout and classes ('' = `root`). `frames` is
  the default T and `image_size` the default frame size (data.frames / data.image_size override them).
  """
  first = os.path.join(root, splits[0])
  if not os.path.isdir(first):
    raise UserError(f"register_video_folder('{name}'): no folder {first} (want {root}/<split>/<class>/<videos>)")
  class_names = tuple(sorted(d for d in os.listdir(first) if os.path.isdir(os.path.join(first, d))))
  if not class_names:
    raise UserError(f"register_video_folder('{name}'): no class subfolders in {first}")
  info = sources.DatasetInfo(name, len(class_names), (image_size, image_size, 3), False, splits[0], splits[-1],
                             None, splits=tuple(splits), frames=frames, class_names=class_names)

  def open_split(split: str, data_dir: str):
    return VideoFolderSource(data_dir or root, split, class_names, extensions, name)

  sources.register_source(info, open_split, stats=IMAGENET_STATS)
  return info


# --- ucf101 (tfds) -----------------------------------------------------------------------------------------
def _ucf101_example(example: dict, index: int) -> dict:
  return {"image": np.asarray(example["video"], np.uint8), "label": int(example["label"])}


UCF101_INFO = sources.DatasetInfo("ucf101", 101, (256, 256, 3), False, "train", "test", "ucf101", frames=16)
sources.register_tfds_dataset(UCF101_INFO, _ucf101_example, stats=IMAGENET_STATS)
