"""The retrieval tool (jaxcnn.retrieval): keyframes and shot changes, index files, search, bad input.

The end-to-end tests index a 10 s video built from scikit-learn digits (digit d on screen from d to
d + 1 s) with `DigitTemplateCLIP`, a model of the CLIP interface whose weights are set rather than
trained: its image tower gives the softmax of nearest-centroid scores (-|x - c_d|^2 up to a constant, c_d
the mean 8 x 8 image of digit d), its text tower adds token embeddings in which the word of digit d
('seven') is the unit vector e_d. A text query for a digit can then find that digit's frames only
if decoding, timestamps, preprocessing, batching, the index files and the ranking are all right.
"""
import json
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxcnn.data.tokenizer import tokenize
from jaxcnn.errors import UserError
from jaxcnn.retrieval import __main__ as cli, build, encoder as encoder_lib, frames, search, store

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FPS, SIDE = 10, 64


class DigitTemplateCLIP(nn.Module):
  image_size: int = 8
  context_length: int = 16
  vocab_size: int = 49408
  embed_dim: int = 10

  def setup(self):
    pixels = self.image_size ** 2
    self.kernel = self.param("kernel", nn.initializers.zeros, (pixels, self.embed_dim))
    self.bias = self.param("bias", nn.initializers.zeros, (self.embed_dim,))
    self.token_embedding = self.param("token_embedding", nn.initializers.zeros, (self.vocab_size, self.embed_dim))

  def encode_image(self, images, train=False):
    return nn.softmax(images.reshape(images.shape[0], -1) @ self.kernel + self.bias)

  def encode_text(self, tokens, train=False):
    return self.token_embedding[tokens].sum(axis=1)

  def __call__(self, images, tokens, train=False):
    norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return {"image": norm(self.encode_image(images)), "text": norm(self.encode_text(tokens))}


def _digits():
  d = load_digits()
  return d.images / 16.0, d.target


def _typical(images, labels, d: int) -> np.ndarray:
  """The image of digit d nearest to the mean image of its class (nearest-centroid classifies it right)."""
  own = images[labels == d]
  return own[np.argmin(((own - own.mean(0)) ** 2).sum(axis=(1, 2)))]


def template_encoder(seed_offset: float = 0.0) -> encoder_lib.Encoder:
  """DigitTemplateCLIP with its weights set (see the module docstring); images normalised with mean/std 0.5."""
  images, labels = _digits()
  x = (images.reshape(len(images), -1) - 0.5) / 0.5
  centroids = np.stack([x[labels == d].mean(0) for d in range(10)])
  kernel = 2 * centroids.T.astype(np.float32)  # -|x - c|^2 = 2 x.c - |c|^2 - |x|^2, the last term shared
  bias = -np.sum(centroids ** 2, axis=1).astype(np.float32) + seed_offset
  table = np.zeros((49408, 10), np.float32)
  for d, word in enumerate(WORDS):
    table[tokenize(word, context_length=16)[0, 1], d] = 1.0
  variables = {"params": {"kernel": kernel, "bias": bias, "token_embedding": table}}
  identity = {"source": "tests/test_retrieval.py", "kind": "weights", "model": "digit_template_clip",
              "params_sha256": encoder_lib.params_digest(variables)}
  half = np.full(1, 0.5, np.float32)
  return encoder_lib.Encoder(DigitTemplateCLIP(), variables, identity, (8, 8), half, half, 1, 16)


def write_digits_video(path, seconds=10, fps=FPS):
  """digit d (its most typical image) from d to d + 1 s, nearest-upscaled to 64 x 64, H.264."""
  import av
  images, labels = _digits()
  with av.open(str(path), "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = SIDE
    stream.pix_fmt = "yuv420p"
    for d in range(seconds):
      frame = np.kron(_typical(images, labels, d % 10), np.ones((SIDE // 8, SIDE // 8)))
      rgb = np.repeat(np.round(frame * 255).astype(np.uint8)[..., None], 3, axis=-1)
      for _ in range(fps):
        out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    out.mux(stream.encode())
  return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """A folder with the digits video (in a subfolder) and one PNG image of a 3."""
  from PIL import Image
  root = tmp_path_factory.mktemp("media")
  os.makedirs(root / "clips")
  write_digits_video(root / "clips" / "digits.mp4")
  images, labels = _digits()
  three = np.kron(images[np.flatnonzero(labels == 3)[1]], np.ones((4, 4)))
  Image.fromarray(np.round(three * 255).astype(np.uint8)).save(root / "three.png")
  return str(root)


@pytest.fixture(scope="module")
def encoder():
  return template_encoder()


@pytest.fixture(scope="module")
def index_dir(media, encoder, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("idx") / "index")
  build.build_index(media, path, encoder, frames.Sampling(every=0.5), batch_size=6, progress=False)
  return path


# --- keyframes and shot changes -------------------------------------------------------------------------


def test_keyframes_every_interval_and_at_shot_changes(media):
  got = [(f.time, f.index, f.reason) for f in frames.frames(media, "clips/digits.mp4", frames.Sampling(every=0.3))]
  expected = []
  for d in range(10):  # each digit is a shot: its first frame, then one every 0.3 s within the shot
    expected += [(d + 0.0, d * FPS, "start" if d == 0 else "shot")]
    expected += [(round(d + t, 1), d * FPS + round(t * FPS), "interval") for t in (0.3, 0.6, 0.9)]
  assert [(round(t, 3), i, r) for t, i, r in got] == expected


def test_shot_detection_threshold_and_min_shot(media):
  def reasons(**kw):
    return [(f.time, f.reason) for f in frames.frames(media, "clips/digits.mp4", frames.Sampling(every=0, **kw))]
  assert [t for t, _ in reasons()] == list(range(10))           # a cut at every digit change
  assert reasons(shot_threshold=0) == [(0.0, "start")]           # detection off, no interval: first frame only
  assert reasons(shot_threshold=0.99) == [(0.0, "start")]        # no digit change differs that much
  assert [t for t, _ in reasons(min_shot=2.5)] == [0, 3, 6, 9]   # cuts sooner than 2.5 s after a shot start ignored


def test_selector_unit():
  select = frames.KeyframeSelector(frames.Sampling(every=1.0, shot_threshold=0.2, min_shot=0.0))
  dark, bright = np.zeros((4, 4), np.uint8), np.full((4, 4), 200, np.uint8)
  seq = [(0.0, dark), (0.5, dark), (1.0, dark), (1.2, bright), (1.7, bright), (2.19, bright), (2.2, bright)]
  assert [select(t, im) for t, im in seq] == ["start", None, "interval", "shot", None, None, "interval"]
  assert frames.frame_difference(dark, bright) == pytest.approx(200 / 255)


def test_bad_sampling_options():
  with pytest.raises(UserError, match="--shot-threshold"):
    frames.Sampling(shot_threshold=1.5)


# --- index files and search -----------------------------------------------------------------------------


def test_index_files(index_dir, media):
  index = store.read(index_dir)
  assert index.embeddings.dtype == np.float32 and index.embeddings.shape == (21, 10)  # 2 keyframes per digit + 1 image
  np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, rtol=1e-5)
  assert index.root == os.path.abspath(media)
  assert [r["file"] for r in index.records] == ["clips/digits.mp4"] * 20 + ["three.png"]
  assert [r["time"] for r in index.records[:4]] == [0.0, 0.5, 1.0, 1.5]
  assert index.meta["keyframes"] == {"every": 0.5, "shot_threshold": 0.1, "min_shot": 0.5}
  assert index.meta["image"]["size"] == [8, 8] and index.meta["model"]["model"] == "digit_template_clip"
  assert sorted(f["file"] for f in index.meta["files"]) == ["clips/digits.mp4", "three.png"]


@pytest.mark.parametrize("digit", range(10))
def test_query_for_a_digit_finds_its_frames(index_dir, encoder, digit):
  index = store.read(index_dir)
  k = 3 if digit == 3 else 2  # the digit's two keyframes (and the image of a 3)
  scores, ids = search.top_k(index.embeddings, encoder.embed_texts([f"a handwritten {WORDS[digit]}"]), k=k)
  found = [index.records[i] for i in ids[0]]
  if digit == 3:
    assert {r["file"] for r in found} == {"clips/digits.mp4", "three.png"}
    found = [r for r in found if r["file"] != "three.png"]
  assert all(digit <= r["time"] < digit + 1 for r in found), found
  assert np.all(np.diff(scores[0]) <= 0)


def test_faiss_and_exact_give_the_same_top_k():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(3000, 32)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  q = rng.normal(size=(5, 32)).astype(np.float32)
  s1, i1 = search.top_k(emb, q, 10, "exact")
  s2, i2 = search.top_k(emb, q, 10, "faiss")
  np.testing.assert_array_equal(i1, i2)
  np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
  brute = np.argsort(-(q @ emb.T), axis=1)[:, :10]
  np.testing.assert_array_equal(i1, brute)
  assert search.top_k(emb[:3], q, 10, "exact")[1].shape == (5, 3)  # k larger than the index


def test_reindex_reuses_unchanged_files_and_refuses_another_model(index_dir, media, encoder, tmp_path):
  import shutil
  copy = str(tmp_path / "index")
  shutil.copytree(index_dir, copy)
  summary = build.build_index(media, copy, encoder, frames.Sampling(every=0.5), progress=False)
  assert summary["reused_files"] == 2 and summary["frames"] == 21
  np.testing.assert_array_equal(store.read(copy).embeddings, store.read(index_dir).embeddings)
  other = template_encoder(seed_offset=0.25)
  before = sorted(os.listdir(copy)), open(os.path.join(copy, store.META)).read()
  with pytest.raises(UserError, match="index built with digit_template_clip .* not with digit_template_clip"):
    build.build_index(media, copy, other, frames.Sampling(every=0.5), progress=False)
  with pytest.raises(UserError, match="index built with"):
    store.check_model(store.read(copy).meta, other.identity, copy, "")
  assert (sorted(os.listdir(copy)), open(os.path.join(copy, store.META)).read()) == before
  assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary directory left behind


# --- the command line -----------------------------------------------------------------------------------


@pytest.fixture
def fake_model(monkeypatch, encoder):
  monkeypatch.setattr(encoder_lib, "load", lambda *a, **k: encoder)
  monkeypatch.setattr(encoder_lib, "from_identity", lambda identity, path: encoder)


def test_cli_index_and_query(media, tmp_path, fake_model, capsys):
  idx, sheet = str(tmp_path / "idx"), str(tmp_path / "sheet.png")
  assert cli.main(["index", media, f"--index={idx}", "--model=x", "--weights=y", "--every=0", "--no-progress"]) == 0
  assert "indexed 11 frames from 2 files" in capsys.readouterr().out
  assert cli.main(["query", f"--index={idx}", "the digit seven", "a handwritten two", "-k", "1", "--json",
                   f"--sheet={sheet}"]) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  assert [(x["query"], x["hits"][0]["time"]) for x in lines] == [("the digit seven", 7.0), ("a handwritten two", 2.0)]
  from PIL import Image
  assert Image.open(sheet).size[0] > 160


def _one_error_line(capsys, status):
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_cli_bad_inputs(media, tmp_path, fake_model, capsys):
  empty = tmp_path / "empty"
  os.makedirs(empty / "sub")
  (empty / "notes.txt").write_text("not media")
  line = _one_error_line(capsys, cli.main(["index", str(empty), f"--index={tmp_path / 'i'}", "--model=x",
                                           "--weights=y"]))
  assert "holds no images or videos" in line and str(empty) in line

  bad = tmp_path / "bad"
  os.makedirs(bad)
  (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  line = _one_error_line(capsys, cli.main(["index", str(bad), f"--index={tmp_path / 'i'}", "--model=x",
                                           "--weights=y", "--no-progress"]))
  assert "broken.jpg: cannot be decoded as an image" in line
  assert not os.path.exists(tmp_path / "i")

  novideo = tmp_path / "novideo"
  os.makedirs(novideo)
  import av
  with av.open(str(novideo / "sound.mp4"), "w") as out:  # an audio-only mp4: no video stream
    stream = out.add_stream("aac", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 8000
    out.mux(stream.encode(frame))
    out.mux(stream.encode())
  (novideo / "empty.mkv").write_bytes(b"")
  line = _one_error_line(capsys, cli.main(["index", str(novideo), f"--index={tmp_path / 'i'}", "--model=x",
                                           "--weights=y", "--no-progress"]))
  assert "empty.mkv: cannot be opened as a video" in line
  (novideo / "empty.mkv").unlink()
  line = _one_error_line(capsys, cli.main(["index", str(novideo), f"--index={tmp_path / 'i'}", "--model=x",
                                           "--weights=y", "--no-progress"]))
  assert "sound.mp4: has no video stream" in line
  (novideo / "sound.mp4").unlink()
  write_digits_video(novideo / "whole.mkv", seconds=1)
  data = (novideo / "whole.mkv").read_bytes()
  (novideo / "whole.mkv").unlink()
  (novideo / "header_only.mkv").write_bytes(data[:data.index(b"\x1f\x43\xb6\x75") + 8])  # 1st Cluster cut short
  line = _one_error_line(capsys, cli.main(["index", str(novideo), f"--index={tmp_path / 'i'}", "--model=x",
                                           "--weights=y", "--no-progress"]))
  assert "header_only.mkv: no video frame could be decoded (expected a video with at least one frame)" in line

  line = _one_error_line(capsys, cli.main(["query", f"--index={media}", "seven"]))
  assert "not a retrieval index" in line
  line = _one_error_line(capsys, cli.main(["index", str(bad), f"--index={media}", "--model=x", "--weights=y"]))
  assert "exists and is not a retrieval index" in line


  import shutil
  shutil.copy(os.path.join(media, "three.png"), bad / "three.png")
  assert cli.main(["index", str(bad), f"--index={tmp_path / 'i'}", "--model=x", "--weights=y", "--no-progress",
                   "--skip-bad"]) == 0
  assert [r["file"] for r in store.read(str(tmp_path / "i")).records] == ["three.png"]


def test_module_entry_point_exits_2_with_one_line(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-m", "jaxcnn.retrieval", "index", str(tmp_path), f"--index={tmp_path / 'i'}",
                        "--model=clip_tiny", "--weights=w"], cwd=root, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and run.stderr.strip().splitlines() == [
      f"error: {tmp_path}: holds no images or videos (expected files ending in "
      f"{', '.join(frames.IMAGE_EXTENSIONS + frames.VIDEO_EXTENSIONS)})"], run.stderr


# --- registered CLIP models through the real loading path -----------------------------------------------


def _save_checkpoint(directory, params):
  """A workdir-like checkpoint (the trainer's 'state' item) that finetune.load_pretrained reads."""
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(str(directory / "checkpoints"), item_names=("state",))
  mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  mngr.wait_until_finished()
  mngr.close()
  return str(directory)


@pytest.fixture(scope="module")
def clip_tiny_weights(tmp_path_factory):
  """Two random clip_tiny parameter sets (seeds 0 and 1), each saved as a checkpoint directory."""
  import jax
  from jaxcnn.registry import create_model
  model = create_model("clip_tiny")
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32), jnp.int32))["params"])
  return [_save_checkpoint(tmp_path_factory.mktemp(f"clip_tiny{seed}"), init(jax.random.PRNGKey(seed)))
          for seed in (0, 1)]


def test_cli_with_clip_tiny_weights(media, tmp_path, clip_tiny_weights, capsys):
  first, second = clip_tiny_weights
  idx = str(tmp_path / "idx")
  args = ["index", media, f"--index={idx}", "--model=clip_tiny", "--every=0", "--no-progress", "--batch-size=4"]
  assert cli.main(args + [f"--weights={first}"]) == 0
  assert "indexed 11 frames from 2 files" in capsys.readouterr().out
  index = store.read(idx)
  assert index.embeddings.shape == (11, 128) and index.meta["image"]["size"] == [32, 32]
  assert index.meta["model"]["model"] == "clip_tiny" and index.meta["model"]["source"] == first
  # query re-loads the index's own model; its top hit for any text is one of the indexed frames
  assert cli.main(["query", f"--index={idx}", "a handwritten seven", "-k", "3", "--sheet="]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "query: a handwritten seven" and len(out) == 4 and media in out[1]

  line = _one_error_line(capsys, cli.main(["query", f"--index={idx}", "seven", "--model=clip_tiny",
                                           f"--weights={second}"]))
  assert "index built with clip_tiny" in line and "not with clip_tiny" in line
  line = _one_error_line(capsys, cli.main(args + [f"--weights={second}"]))  # re-index with other weights
  assert "index built with clip_tiny" in line
  assert store.read(idx).meta["model"]["source"] == first  # the index is as it was

  meta_path = os.path.join(idx, store.META)
  meta = json.load(open(meta_path))
  meta["model"]["source"] = str(tmp_path / "moved")
  json.dump(meta, open(meta_path, "w"))
  line = _one_error_line(capsys, cli.main(["query", f"--index={idx}", "seven"]))
  assert f"built with clip_tiny from {tmp_path / 'moved'}, which is no longer there" in line

  line = _one_error_line(capsys, cli.main(["index", media, f"--index={tmp_path / 'rn'}", "--model=clip_tiny_rn",
                                           f"--weights={first}", "--no-progress"]))
  assert f"{first}: weights of another architecture, not clip_tiny_rn" in line
  assert not os.path.exists(tmp_path / "rn")



def test_open_clip_weights_give_open_clip_embeddings(media, tmp_path):
  """`--model=clip_tiny --weights=FILE.pt` (an open_clip state dict): the index holds open_clip's image embeddings
  of the frames, prepared as open_clip's eval transform prepares them, and texts embed as open_clip's do."""
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  from jaxcnn.models.clip import VARIANTS
  v = VARIANTS["clip_tiny"]
  torch.manual_seed(0)
  ref = open_clip.model.CLIP(v["embed_dim"], dict(image_size=v["image_size"], layers=v["vision_layers"],
                                                  width=v["vision_width"], patch_size=v["vision_patch_size"],
                                                  head_width=v["vision_head_width"]),
                             dict(context_length=v["context_length"], width=v["text_width"], heads=v["text_heads"],
                                  layers=v["text_layers"]), quick_gelu=True).eval()
  path = str(tmp_path / "open_clip_tiny.pt")
  torch.save(ref.state_dict(), path)
  idx = str(tmp_path / "idx")
  assert cli.main(["index", media, f"--index={idx}", "--model=clip_tiny", f"--weights={path}", "--every=0",
                   "--no-progress"]) == 0
  index = store.read(idx)
  transform = open_clip.image_transform(v["image_size"], is_train=False)
  with torch.no_grad():
    pixels = torch.stack([transform(frames.load_frame(index.root, r)) for r in index.records])
    want = ref.encode_image(pixels, normalize=True).numpy()
    text = ref.encode_text(torch.from_numpy(tokenize(["a handwritten seven"], v["context_length"])).long(),
                           normalize=True).numpy()
  np.testing.assert_allclose(index.embeddings, want, atol=1e-4)
  np.testing.assert_allclose(encoder_lib.from_weights("clip_tiny", path).embed_texts(["a handwritten seven"]), text,
                             atol=1e-4)


# --- a trained model (slow: trains clip_digits, about 8 CPU-minutes under the tests' 8 host devices) ------


@pytest.mark.slow
def test_trained_clip_digits_run_finds_each_digit_in_the_video(media, tmp_path, capsys):
  """clip_digits trained from scratch, then `index --workdir=RUN` and one text query per digit."""
  from experiments.configs import get_experiment
  from jaxcnn.train import train_and_evaluate
  config, _ = get_experiment("clip_digits")
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["eval/zeroshot_accuracy"] >= 0.8
  idx = str(tmp_path / "idx")
  assert cli.main(["index", media, f"--index={idx}", f"--workdir={tmp_path / 'run'}", "--no-progress"]) == 0
  queries = [f"a drawing of the digit {word}" for word in WORDS]  # phrasing the training captions never use
  assert cli.main(["query", f"--index={idx}", *queries, "-k", "1", "--json", "--sheet="]) == 0
  tops = [json.loads(line)["hits"][0] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
  right = [d for d, h in enumerate(tops) if (h["file"] == "three.png" and d == 3) or d <= h["time"] < d + 1]
  assert len(right) >= 8, tops  # the run's zero-shot accuracy is about 0.9: allow two misses
