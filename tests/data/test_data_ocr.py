"""Text-recognition data: digit_strings canvases, word-image folders (IIIT5K / MJSynth lists), bad labels."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data import ocr, sources
from jaxcnn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_digit_string_layout_and_determinism():
  digits = sources.digits_arrays()["test"]
  a, la = ocr.digit_string(*digits, np.random.default_rng([11, 1, 5]))
  b, lb = ocr.digit_string(*digits, np.random.default_rng([11, 1, 5]))
  assert a.shape == ocr.CANVAS_HW and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  for i in range(40):
    canvas, label = ocr.digit_string(*digits, np.random.default_rng([11, 1, i]))
    assert 3 <= len(label) <= 8 and set(label.tolist()) <= set(range(10))
    assert canvas.max() > 128   # ink was pasted


def test_frames_needed_counts_repeats():
  ids = np.array([[7, 4, 11, 11, 14, 0], [0, 0, 0, 0, 0, 0], [1, 2, 3, 0, 0, 0]])  # 'hello', 'aaa', 'bcd'
  np.testing.assert_array_equal(ocr.frames_needed(ids, np.array([5, 3, 3])), [6, 5, 3])


def make_folder(tmp_path, lines, list_name="train.txt"):
  os.makedirs(tmp_path / "img", exist_ok=True)
  for k in range(3):
    Image.fromarray(np.full((20, 50 + 10 * k, 3), 40 * k, np.uint8)).save(tmp_path / "img" / f"{k}_word_{k}.png")
  (tmp_path / list_name).write_text("\n".join(lines) + "\n")
  return str(tmp_path)


def test_word_folder_column_and_filename_conventions(tmp_path):
  folder = make_folder(tmp_path, ["# comment", "img/0_word_0.png Hello", "", "img/1_word_1.png  ab 12"])
  src = ocr.WordImageSource(folder, "train.txt", ocr.LOWER_ALPHANUMERIC + " ", 8, "column", True, 1, "t")
  assert len(src) == 2
  ex = src[1]
  assert ex["image"].shape == (20, 60, 1) and ex["image"].dtype == np.uint8
  assert ocr.decode(ex["transcript"], ex["transcript_length"], ocr.LOWER_ALPHANUMERIC + " ") == "ab 12"
  np.testing.assert_array_equal(src.ctc_frames, [6, 5])    # 'hello' has one repeat
  (tmp_path / "ann.txt").write_text("./img/2_word_2.png 2\n")
  mj = ocr.WordImageSource(folder, "ann.txt", ocr.LOWER_ALPHANUMERIC, 25, "filename", True, 3, "m")
  assert ocr.decode(mj[0]["transcript"], mj[0]["transcript_length"], ocr.LOWER_ALPHANUMERIC) == "word"
  assert mj[0]["image"].shape == (20, 70, 3)


@pytest.mark.parametrize("line,message", [
    ("img/0_word_0.png caf\u00e9", r"train.txt line 1 \(img/0_word_0.png\): label 'caf\u00e9' has character\(s\) "
                                  r"'\u00e9' outside the alphabet"),
    ("img/0_word_0.png abcdefghij", r"line 1 .*has 10 characters, more than the 8 label slots"),
    ("img/0_word_0.png", r"line 1 .*no label"),
])
def test_bad_labels_name_the_line(tmp_path, line, message):
  folder = make_folder(tmp_path, [line])
  with pytest.raises(UserError, match=message):
    ocr.WordImageSource(folder, "train.txt", ocr.LOWER_ALPHANUMERIC, 8, "column", False, 1, "t")


def test_missing_list_file_and_bad_registration(tmp_path):
  with pytest.raises(UserError, match="no list file"):
    ocr.WordImageSource(str(tmp_path), "train.txt", "ab", 8, "column", False, 1, "t")
  with pytest.raises(UserError, match="distinct characters"):
    ocr.register_word_images("x_words", {"train": "a.txt"}, alphabet="aa")


@pytest.mark.slow
def test_cli_bad_label_exits_2_with_one_line(tmp_path):
  folder = make_folder(tmp_path, ["img/0_word_0.png ok", "img/1_word_1.png b@d"])
  (tmp_path / "test.txt").write_text("img/0_word_0.png ok\n")
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--exp=crnn_digits", f"--workdir={tmp_path}/w",
                         "--config.data.name=iiit5k", f"--config.data.data_dir={folder}",
                         "--config.data.image_size=(32, 100)"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "Traceback" not in proc.stderr, proc.stderr
  assert last.startswith("error:") and "train.txt line 2 (img/1_word_1.png)" in last and "'@'" in last, proc.stderr
