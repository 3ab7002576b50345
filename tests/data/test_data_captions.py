"""Image-text data: digits_captions (split, captions, templates disjoint from zero-shot), tokenization and
truncation as open_clip, the user's CSV / JSONL / folder pairs, tfds coco_captions through mock_data, bad input."""
import json
import os

import numpy as np
import open_clip
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcnn import data
from jaxcnn.data import captions, sources, tokenizer
from jaxcnn.errors import UserError
from jaxcnn.eval import templates


def cfg(name, **kw):
  c = data.default_data_config()
  c.name = name
  c.num_threads = 0
  for k, v in kw.items():
    c[k] = v
  return c


def test_digits_captions_are_the_digits_split_with_five_template_captions():
  for split in ("train", "test"):
    ours, digits = sources.get_source("digits_captions", split), sources.get_source("digits", split)
    np.testing.assert_array_equal(ours.images, digits.images)
    np.testing.assert_array_equal(ours.labels, digits.labels)
    for i in (0, len(ours) - 1):
      example = ours[i]
      made = {captions.digit_caption(t, example["label"]) for t in captions.TRAIN_TEMPLATES}
      assert len(set(example["captions"])) == 5 and set(example["captions"]) <= made
  batch = next(data.train_iterator(cfg("digits_captions", image_size=16, channels=3, context_length=20),
                                   global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 16, 16, 3) and batch["captions"].shape == (4, 5, 20)
  assert batch["captions"].dtype == np.int32 and (batch["captions"][:, :, 0] == tokenizer.SOT_ID).all()
  word = captions.DIGIT_WORDS[int(batch["label"][0])]
  assert all(word in text or str(int(batch["label"][0])) in text for text in tokenizer.decode(batch["captions"][0]))


def test_zero_shot_prompts_share_no_phrasing_with_training_captions():
  assert not set(templates.DIGITS_TEMPLATES) & set(captions.TRAIN_TEMPLATES)
  train = {captions.digit_caption(t, c) for t in captions.TRAIN_TEMPLATES for c in range(10)}
  prompts = {t.format(w) for t in templates.DIGITS_TEMPLATES for w in captions.DIGIT_WORDS}
  assert not {tokenizer.clean(p) for p in prompts} & {tokenizer.clean(t) for t in train}
  assert len(templates.templates("imagenet")) == 80 and len(templates.templates("cifar10")) == 18
  with pytest.raises(UserError, match="zero-shot templates"):
    templates.templates("imagenett")


def write_images(folder, n=3):
  os.makedirs(folder, exist_ok=True)
  digits = sources.get_source("digits", "test")
  paths = []
  for i in range(n):
    path = os.path.join(folder, f"im{i}.png")
    Image.fromarray(np.repeat(digits.images[i], 3, -1)).resize((12, 12)).save(path)
    paths.append(path)
  return paths


LONG = "a very long caption " * 20


def test_csv_jsonl_and_folder_pairs(tmp_path):
  write_images(tmp_path / "imgs")
  rows = [("imgs/im0.png", "a zero"), ("imgs/im1.png", "a one"), ("imgs/im0.png", LONG), ("imgs/im2.png", "two")]
  with open(tmp_path / "test.csv", "w") as f:
    f.write("filepath\ttitle\n" + "".join(f"{p}\t{t}\n" for p, t in rows))
  with open(tmp_path / "test.jsonl", "w") as f:
    f.write("".join(json.dumps({"filepath": p, "title": t}) + "\n" for p, t in rows))
  folder = tmp_path / "test"
  write_images(folder)
  for i, lines in enumerate(["a zero\n" + LONG, "a one", "\ntwo\n"]):
    (folder / f"im{i}.txt").write_text(lines)
  for name in ("image_text_csv", "image_text_jsonl", "image_text_folder"):
    c = cfg(name, data_dir=str(tmp_path), image_size=8, max_captions=3, context_length=10, eval_split="test",
            normalize="unit")
    batch = next(iter(data.eval_iterator(c, global_batch_size=4)))
    assert batch["image"].shape == (4, 8, 8, 3) and batch["captions"].shape == (4, 3, 10), name
    np.testing.assert_array_equal(batch["mask"], [1, 1, 1, 0])
    # im0 has two captions (its rows grouped), the long one truncated exactly as open_clip does
    np.testing.assert_array_equal(batch["captions"][0, :2], open_clip.tokenize(["a zero", LONG], context_length=10))
    assert batch["captions"][0, 1, -1] == tokenizer.EOT_ID and not batch["captions"][0, 2].any()
    assert tokenizer.decode(batch["captions"][2, 0]) == "two"


def test_other_separator_and_columns_register_by_name(tmp_path):
  write_images(tmp_path, 2)
  (tmp_path / "train.csv").write_text("image,caption\nim0.png,zero\nim1.png,one\n")
  captions.register_image_text("my_pairs", "csv", separator=",", image_key="image", caption_key="caption",
                               splits=("train",))
  source = sources.get_source("my_pairs", "train", data_dir=str(tmp_path))
  assert len(source) == 2 and source[1]["captions"] == ["one"] and source[1]["image"].shape == (12, 12, 3)


def test_bad_files_are_one_line_naming_them(tmp_path):
  def error(name, folder=tmp_path):
    with pytest.raises(UserError) as err:
      c = cfg(name, data_dir=str(folder), image_size=8, normalize="unit")
      list(data.eval_iterator(c, global_batch_size=2))
    assert "\n" not in str(err.value)
    return str(err.value)
  assert str(tmp_path / "test.csv") in error("image_text_csv")
  assert "folder not found" in error("image_text_folder")
  (tmp_path / "cols").mkdir()
  (tmp_path / "cols" / "test.csv").write_text("path\ttitle\nx.png\thello\n")
  assert "lacks the column(s) ['filepath']" in error("image_text_csv", tmp_path / "cols")
  (tmp_path / "bad.png").write_bytes(b"not an image at all")
  (tmp_path / "test.csv").write_text("filepath\ttitle\nbad.png\thello\n")
  msg = error("image_text_csv")
  assert "cannot decode image" in msg and str(tmp_path / "bad.png") in msg
  (tmp_path / "other").mkdir()   # (a split's files are read once per process)
  (tmp_path / "other" / "test.csv").write_text("filepath\ttitle\nbad.png\t \n")
  assert "has no caption" in error("image_text_csv", tmp_path / "other")


def test_coco_captions_through_tfds_mock_data():
  info = data.dataset_info("coco_captions")
  assert info.tfds_name == "coco_captions/2014" and info.eval_split == "test"
  rng = np.random.default_rng(0)
  examples = [{"image": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8),
               "captions": {"text": [f"caption {i} {j}".encode() for j in range(6 + i % 2)],
                            "id": np.arange(6 + i % 2)}} for i in range(5)]

  def as_data_source(builder, split, **unused):
    return examples

  c = cfg("coco_captions", image_size=16, context_length=8)
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    batch = next(iter(data.eval_iterator(c, global_batch_size=6)))
    train = next(data.train_iterator(c, global_batch_size=2, seed=0))
  assert batch["captions"].shape == (6, 5, 8) and train["captions"].shape == (2, 5, 8)
  assert tokenizer.decode(batch["captions"][3, 4]) == "caption 3 4"   # the first 5 of 7 kept
  assert batch["mask"].tolist() == [1, 1, 1, 1, 1, 0]
