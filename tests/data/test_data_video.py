"""Video data (jaxcnn.data.video): moving_digits, frame sampling, clip augmentation, video folders, bad clips."""
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcnn import data as data_lib
from jaxcnn.data import sources, video
from jaxcnn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_moving_digits_is_deterministic_and_labelled_by_the_first_digit():
  source = data_lib.get_source("moving_digits", "test")
  assert len(source) == 1000 and source.images.shape[1:] == (8, 32, 32, 1)
  digits = sources.digits_arrays()["test"]
  for i in (0, 17, 999):
    clip, pair = video.moving_digits_clip(*digits, np.random.default_rng([13, True, i]))
    np.testing.assert_array_equal(source[i]["image"], clip)
    np.testing.assert_array_equal(source[i]["digits"], pair)
    assert source[i]["label"] == pair[0] != pair[1]
  assert video.visible_frames(8) == (range(0, 5), range(3, 8))
  train = data_lib.get_source("moving_digits", "train")
  assert (train.images[:200].reshape(200, 8, -1).max(-1) > 0).all()      # a digit on every frame
  counts = np.bincount(train.labels, minlength=10)
  assert counts.min() > 300 and counts.max() < 500                        # classes balanced (4,000 clips)


def test_the_first_digit_leaves_and_the_second_arrives():
  """Frames 0-2 show only the first digit, 5-7 only the second: drawn alone, each matches its frames."""
  images, labels = sources.digits_arrays()["train"]
  clip, pair = video.moving_digits_clip(images, labels, np.random.default_rng([13, False, 5]))
  only_first = images.copy()
  rng = np.random.default_rng([13, False, 5])
  first, second = int(rng.integers(len(images))), int(rng.integers(len(images)))
  assert labels[first] == pair[0]
  blank = np.zeros_like(images[second])
  only_first[second] = blank
  alone, _ = video.moving_digits_clip(only_first, labels, np.random.default_rng([13, False, 5]))
  np.testing.assert_array_equal(alone[:3], clip[:3])
  assert not alone[5:].any()


def test_frame_sampling_and_too_few_frames():
  np.testing.assert_array_equal(video.frame_indices(8, 8), np.arange(8))
  np.testing.assert_array_equal(video.frame_indices(8, 4), [1, 3, 5, 7])
  np.testing.assert_array_equal(video.frame_indices(100, 3), [16, 50, 83])
  clip = np.arange(5)[:, None, None, None].astype(np.uint8) * np.ones((5, 2, 2, 1), np.uint8)
  with pytest.raises(UserError, match=r"clip 3 has 5 frame\(s\), fewer than data.frames=8; allowed: data.frames <= 5"):
    video.sample_frames(clip, 8, "clip 3")
  assert video.sample_frames(clip, 2, "x")[:, 0, 0, 0].tolist() == [1, 3]


def _tiny_clip_dataset():
  """Clips whose frames are all the same image: consistent augmentation must keep them the same."""
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, size=(6, 1, 10, 10, 3), dtype=np.uint8)
  clips = np.ascontiguousarray(np.repeat(frame, 4, axis=1))
  info = sources.DatasetInfo("test_static_clips", 3, (10, 10, 3), True, "train", "train", None,
                             splits=("train",), frames=4)
  sources.register_embedded(info, lambda: {"train": {"image": clips, "label": np.arange(6) % 3}})
  return clips


def test_clip_batches_and_consistent_augmentation():
  _tiny_clip_dataset()
  cfg = data_lib.default_data_config()
  cfg.name, cfg.augment, cfg.image_size, cfg.num_threads = "test_static_clips", "crop,flip,erase", 8, 0
  cfg.frames = 2
  spec = data_lib.element_spec(cfg, 6)
  assert spec["image"].shape == (6, 2, 8, 8, 3)
  batch = next(data_lib.train_iterator(cfg, global_batch_size=6, seed=3))
  assert batch["image"].shape == (6, 2, 8, 8, 3)
  np.testing.assert_array_equal(batch["image"][:, 0], batch["image"][:, 1])   # one crop, flip, erase per clip
  again = next(data_lib.train_iterator(cfg, global_batch_size=6, seed=3))
  np.testing.assert_array_equal(batch["image"], again["image"])
  # a clip's augmentation equals the same draws on a single image (the generator rewound per frame)
  from jaxcnn.data import config as config_lib, transforms
  options = config_lib.resolve(cfg).augment_options
  image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  one = transforms.augment(image, np.random.default_rng(5), ("crop", "flip"), options)
  both = transforms.augment(np.stack([image, image]), np.random.default_rng(5), ("crop", "flip"), options)
  np.testing.assert_array_equal(both[0], one)
  np.testing.assert_array_equal(both[1], one)
  cfg.frames = 5
  with pytest.raises(UserError, match=r"example 0 of test_static_clips:train.* has 4 frame\(s\), fewer than "
                                      r"data.frames=5"):
    next(iter(data_lib.eval_iterator(cfg, global_batch_size=6)))
  cfg.name, cfg.frames = "digits", 4
  with pytest.raises(UserError, match="image dataset"):
    data_lib.resolve(cfg)


def _write_video(path, frames, size=16):
  import av
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=10)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for t in range(frames):
      image = np.full((size, size, 3), 20 * t, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def test_video_folder(tmp_path):
  for split, cls, name, frames in [("train", "jump", "a.mp4", 6), ("train", "run", "b.mp4", 9),
                                    ("test", "run", "c.mp4", 3)]:
    os.makedirs(tmp_path / split / cls, exist_ok=True)
    _write_video(str(tmp_path / split / cls / name), frames)
  (tmp_path / "train" / "run" / "notes.txt").write_text("not a video")
  info = video.register_video_folder("test_video_folder", str(tmp_path), frames=4, image_size=8)
  assert info.class_names == ("jump", "run") and info.frames == 4
  cfg = data_lib.default_data_config()
  cfg.name, cfg.num_threads = "test_video_folder", 0
  cfg.train_split = cfg.eval_split = "train"
  batch = next(iter(data_lib.eval_iterator(cfg, global_batch_size=2)))
  assert batch["image"].shape == (2, 4, 8, 8, 3) and batch["label"].tolist() == [0, 1]
  # uniform sampling: frames 0, 2, 3, 5 of the 6 (grey levels 20 t, mpeg4 keeps them roughly)
  source = data_lib.get_source("test_video_folder", "train", data_dir=str(tmp_path))
  levels = source.read_clip(0, 4)["image"].reshape(4, -1).mean(-1)
  np.testing.assert_allclose(levels, [0, 40, 60, 100], atol=6)
  cfg.eval_split = "test"
  with pytest.raises(UserError, match=r"video .*c.mp4 .* has 3 frame\(s\), fewer than data.frames=4"):
    next(iter(data_lib.eval_iterator(cfg, global_batch_size=1)))
  (tmp_path / "train" / "jump" / "broken.mp4").write_bytes(b"\x00" * 64)
  sources._open_registered.cache_clear()
  broken = data_lib.get_source("test_video_folder", "train", data_dir=str(tmp_path))
  with pytest.raises(UserError, match=r"broken.mp4 \(dataset .test_video_folder.\): cannot decode it with PyAV \(Invalid data"):
    broken.read_clip(broken.paths.index(str(tmp_path / "train" / "jump" / "broken.mp4")), 4)


def test_too_few_frames_exits_2_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--exp=cnn_lstm_moving_digits", "--config.data.frames=9",
       "--config.data.train_split=train[:4]", "--config.train.batch_size=8", "--config.eval.batch_size=8", 
       "--config.model.encoder_options={'depth': 8, 'width': 0.25}", "--config.model.hidden_size=4",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "has 8 frame(s), fewer than data.frames=9" in last, last
  assert "moving_digits" in last
