"""What gets indexed: the images of a folder and keyframes of its videos, decoded with Pillow and PyAV.

A video gives its first frame, then a frame every `every` seconds, and the first frame of every shot.
The shot-change test is a frame difference (PySceneDetect's ContentDetector idea on luma alone): each
decoded frame is shrunk to a 32 x 32 grayscale thumbnail by FFmpeg's scaler; the mean absolute
difference with the previous frame's thumbnail, in [0, 1], above `shot_threshold` (default 0.1,
about ContentDetector's 27 / 255) starts a shot, unless the current shot began less than `min_shot`
seconds earlier (flashes, fast pans). Interval sampling restarts at each shot start.
"""
import dataclasses
import os
from typing import Iterator, List, Optional

import numpy as np

from jaxcnn.errors import UserError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".avi", ".flv", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".webm", ".wmv")
THUMB = 32  # side of the shot-change thumbnail


@dataclasses.dataclass(frozen=True)
class Sampling:
  every: float = 1.0           # seconds between keyframes within a shot (0: shot starts only)
  shot_threshold: float = 0.1  # mean absolute luma difference in [0, 1] that starts a shot (0: off)
  min_shot: float = 0.5        # seconds: no shot change detected sooner after the last one

  def __post_init__(self):
    if not (self.every >= 0 and 0 <= self.shot_threshold <= 1 and self.min_shot >= 0):
      raise UserError(f"keyframe options: --every (>= 0 s), --shot-threshold (0 to 1) and --min-shot (>= 0 s) "
                      f"got {self.every}, {self.shot_threshold}, {self.min_shot}")


@dataclasses.dataclass
class Frame:
  file: str                # path relative to the indexed folder
  time: float              # seconds from the start of the video (0 for an image)
  index: int               # number of the decoded frame in its video (0 for an image)
  pts: Optional[int]       # the frame's presentation timestamp (stream time base), for seeking back to it
  reason: str              # image | start | interval | shot
  image: "object" = dataclasses.field(repr=False, default=None)  # PIL RGB image

  def record(self) -> dict:
    return {"file": self.file, "time": round(self.time, 6), "frame": self.index, "pts": self.pts,
            "reason": self.reason}


def is_media(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def find_media(root: str) -> List[str]:
  """Paths (relative to `root`, sorted) of every image and video below `root`; hidden entries skipped."""
  if not os.path.isdir(root):
    raise UserError(f"{root}: not a folder (expected a folder of images and videos)")
  found = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.relpath(os.path.join(folder, f), root) for f in files if not f.startswith(".") and is_media(f)]
  if not found:
    raise UserError(f"{root}: holds no images or videos (expected files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
  return sorted(found)


def frames(root: str, rel: str, sampling: Sampling) -> Iterator[Frame]:
  """The frames of one file to index: the image itself, or a video's keyframes."""
  if rel.lower().endswith(IMAGE_EXTENSIONS):
    yield Frame(rel, 0.0, 0, None, "image", read_image(os.path.join(root, rel)))
  else:
    yield from video_keyframes(root, rel, sampling)


def read_image(path: str):
  from PIL import Image
  try:
    with Image.open(path) as im:
      return im.convert("RGB")  # the first frame of an animation
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f"{path}: cannot be decoded as an image ({_cause(e)}); expected a readable "
                    f"{'/'.join(x[1:] for x in IMAGE_EXTENSIONS)} file") from None


class KeyframeSelector:
  """Decides, frame by frame in decoding order, which frames to keep (see the module docstring)."""

  def __init__(self, sampling: Sampling):
    self.s = sampling
    self.prev = None
    self.shot_start = self.next_time = 0.0

  def __call__(self, time: float, thumb: np.ndarray) -> Optional[str]:
    prev, self.prev = self.prev, thumb
    if prev is None:
      reason = "start"
    elif (self.s.shot_threshold > 0 and time - self.shot_start >= self.s.min_shot
          and frame_difference(prev, thumb) > self.s.shot_threshold):
      reason = "shot"
    elif self.s.every > 0 and time >= self.next_time - 1e-6:
      self.next_time += self.s.every * np.floor((time - self.next_time + 1e-6) / self.s.every + 1)
      return "interval"
    else:
      return None
    self.shot_start, self.next_time = time, time + self.s.every
    return reason


def frame_difference(a: np.ndarray, b: np.ndarray) -> float:
  """Mean absolute difference of two uint8 thumbnails, in [0, 1]."""
  return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32)))) / 255.0


def _av():
  try:
    import av
  except ImportError:
    raise UserError("reading videos needs PyAV: pip install 'jaxcnn[retrieval]'") from None
  return av


def _open_video(path: str):
  av = _av()
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise UserError(f"{path}: cannot be opened as a video ({_cause(e)}); expected a video file FFmpeg reads") from None
  if not container.streams.video:
    container.close()
    raise UserError(f"{path}: has no video stream (expected a video with at least one frame)")
  return container


def _time(frame, i: int, stream) -> float:
  if frame.time is not None:
    return float(frame.time)
  rate = stream.average_rate or stream.guessed_rate or 25
  return i / float(rate)


def video_keyframes(root: str, rel: str, sampling: Sampling) -> Iterator[Frame]:
  av = _av()
  path = os.path.join(root, rel)
  select, i = KeyframeSelector(sampling), -1
  with _open_video(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
      for i, frame in enumerate(container.decode(stream)):
        thumb = frame.reformat(width=THUMB, height=THUMB, format="gray").to_ndarray()
        t = _time(frame, i, stream)
        reason = select(t, thumb)
        if reason:
          yield Frame(rel, t, i, frame.pts, reason, frame.to_image())
    except av.FFmpegError as e:
      raise UserError(f"{path}: decoding failed after {i + 1} frames ({_cause(e)}); "
                      f"expected a readable video") from None
  if i < 0:
    raise UserError(f"{path}: no video frame could be decoded (expected a video with at least one frame)")


def load_frame(root: str, record: dict):
  """The PIL RGB image of an index record (decoded again from its file), for contact sheets."""
  path = os.path.join(root, record["file"])
  if not os.path.exists(path):
    raise UserError(f"{path}: indexed but no longer there (re-run index to update the index)")
  if record["reason"] == "image":
    return read_image(path)
  with _open_video(path) as container:
    stream = container.streams.video[0]
    pts = record.get("pts")
    if pts is not None:  # seek to the keyframe at or before it, then decode forward
      container.seek(pts, stream=stream, backward=True)
    for i, frame in enumerate(container.decode(stream)):
      if pts is None and i == record["frame"] or pts is not None and frame.pts is not None and frame.pts >= pts:
        return frame.to_image()
  raise UserError(f"{path}: frame {record['frame']} (t={record['time']} s) not found; the file changed since indexing")


def _cause(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__
