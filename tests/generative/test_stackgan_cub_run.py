"""`stackgan_cub` and `stackgan_cub_stage2` through the CLI and the trainer on a miniature StackGAN birds folder."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from experiments import run
from experiments.configs import get_experiment
from jaxcnn import data as data_lib
from jaxcnn.data import embeddings
from jaxcnn.errors import UserError
from jaxcnn.tasks import get_task
from jaxcnn.train.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ["001.Black_footed_Albatross", "017.Cardinal", "200.Common_Yellowthroat"]
COLOURS = [(40, 60, 200), (200, 30, 30), (220, 210, 40)]   # a bird colour per class, on grey


def make_birds(root, per_class=(4, 2)):
  """The StackGAN birds layout with per_class (train, test) images of each class; returns the split keys."""
  cub = os.path.join(root, "CUB_200_2011")
  lines, boxes, keys = [], [], {"train": [], "test": []}
  rng = np.random.default_rng(0)
  image_id = 0
  for c, (name, colour) in enumerate(zip(CLASSES, COLOURS)):
    os.makedirs(os.path.join(cub, "images", name))
    for i in range(sum(per_class)):
      image_id += 1
      key = f"{name}/{name.split('.')[1]}_{i:04d}_{image_id}"
      h, w = 36 + 4 * i, 48
      image = np.full((h, w, 3), 128, np.uint8)
      x, y, bw, bh = 10 + i, 8, 20, 14 + i        # the bird: a coloured box
      image[y:y + bh, x:x + bw] = colour
      ext = ".png" if c == 2 else ".jpg"           # images.txt names the file, whatever its type
      Image.fromarray(image).save(os.path.join(cub, "images", key + ext))
      lines.append(f"{image_id} {key}{ext}")
      boxes.append(f"{image_id} {x}.0 {y}.0 {bw}.0 {bh}.0")
      keys["train" if i < per_class[0] else "test"].append(key)
  with open(os.path.join(cub, "images.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(cub, "bounding_boxes.txt"), "w") as f:
    f.write("\n".join(boxes) + "\n")
  for split, split_keys in keys.items():
    os.makedirs(os.path.join(root, split))
    # Caption embeddings near a class centre; train as a list of arrays, test as one array (both occur).
    centres = np.random.default_rng(1).normal(size=(len(CLASSES), embeddings.EMBEDDING_DIM))
    emb = [(centres[CLASSES.index(k.split("/")[0])]
            + 0.1 * rng.normal(size=(embeddings.CAPTIONS_PER_IMAGE, embeddings.EMBEDDING_DIM))).astype(np.float32)
           for k in split_keys]
    with open(os.path.join(root, split, "filenames.pickle"), "wb") as f:
      pickle.dump(split_keys, f, protocol=2)
    with open(os.path.join(root, split, embeddings.EMBEDDING_FILE), "wb") as f:
      pickle.dump(emb if split == "train" else np.stack(emb), f, protocol=2)
    with open(os.path.join(root, split, "class_info.pickle"), "wb") as f:
      pickle.dump([embeddings.class_of(k) + 1 for k in split_keys], f, protocol=2)
  return keys


TINY = ["--config.model.c_dim=3", "--config.model.gf_dim=4", "--config.model.df_dim=4", "--config.model.ef_dim=3",
        "--config.train.batch_size=8", "--config.train.log_every=1", "--config.eval.batch_size=8",
        "--config.checkpoint.use_async=false", "--config.gan.grid_size=2", "--config.data.num_threads=1"]


def stage1_args(birds, workdir, steps=4):
  return ["--exp=stackgan_cub", f"--workdir={workdir}", f"--config.data.data_dir={birds}",
          "--config.data.image_size=8", "--config.model.latent_dim=6", f"--config.train.steps={steps}",
          "--config.eval.every=2", "--config.checkpoint.every=2", "--config.gan.fid_samples=8", *TINY]


def checkpoint_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("birds"))
  return root, make_birds(root)


@pytest.fixture(scope="module")
def stage1(birds, tmp_path_factory):
  """A 4-step Stage-I run through the CLI (FID extractor cached in a private folder)."""
  cache = str(tmp_path_factory.mktemp("cache"))
  workdir = str(tmp_path_factory.mktemp("stage1"))
  old = os.environ.get("JAXCNN_CACHE")
  os.environ["JAXCNN_CACHE"] = cache
  try:
    assert run.main(stage1_args(birds[0], workdir)) == 0
  finally:
    if old is None:
      os.environ.pop("JAXCNN_CACHE")
    else:
      os.environ["JAXCNN_CACHE"] = old
  return workdir, cache


def test_birds_pipeline_batches(birds):
  root, keys = birds
  cfg = data_lib.default_data_config()
  cfg.update(dict(name="cub_stackgan", data_dir=root, image_size=8, normalize="symmetric", augment="flip"))
  batch = next(data_lib.train_iterator(cfg, global_batch_size=6, seed=0))
  chex.assert_shape(batch["image"], (6, 8, 8, 3))
  chex.assert_shape(batch["embedding"], (6, embeddings.CAPTIONS_PER_IMAGE, embeddings.EMBEDDING_DIM))
  assert set(batch["label"].tolist()) <= {0, 16, 199}
  source = data_lib.get_source("cub_stackgan", "train", data_dir=root)
  assert len(source) == len(keys["train"]) == 12
  # Each position's embedding is that of the image with its label (the fields travel with their example).
  for k in range(6):
    matches = [i for i in range(len(source)) if np.array_equal(source.embeddings[i], batch["embedding"][k])]
    assert len(matches) == 1 and source.labels[matches[0]] == batch["label"][k]
  # The crop is the bird's square: the class colour dominates the crop's centre.
  centre = (batch["image"][:, 3:5, 3:5] + 1) * 127.5
  colours = {0: COLOURS[0], 16: COLOURS[1], 199: COLOURS[2]}
  for k in range(6):
    np.testing.assert_allclose(centre[k].mean((0, 1)), colours[int(batch["label"][k])], atol=12)
  evals = list(data_lib.eval_iterator(cfg, global_batch_size=8))
  assert len(evals) == 1 and evals[0]["mask"].sum() == 6 and not evals[0]["embedding"][6:].any()


def test_stage1_runs_end_to_end(stage1):
  workdir, _ = stage1
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["data"] == "cub_stackgan" and summary["step"] == 4
  for key in ("eval/d_real", "eval/fid", "eval/inception_score", "eval/cond_accuracy"):
    assert np.isfinite(summary[key]), key
  assert "cub_stackgan-8x8x3" in summary["eval/fid_extractor"]
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/d_wrong"]) and np.isfinite(r["train/kl"]) for r in train)
  for step in (2, 4):
    assert os.path.exists(os.path.join(workdir, "plots", f"samples_step{step:06d}.png"))
  state = checkpoint_state(workdir)
  assert int(state["step"]) == 4 and set(state["params"]) == {"generator", "discriminator"}
  # The condition entering Conditioning Augmentation is the 1024-d text embedding.
  assert state["params"]["generator"]["ca"]["fc"]["kernel"].shape == (embeddings.EMBEDDING_DIM, 4 * 3)


def test_stage1_resume_is_exact(birds, stage1, tmp_path):
  """Killed after the step-2 checkpoint: the resumed run ends with the same networks (data order, captions)."""
  ref, cache = stage1
  workdir = str(tmp_path / "resumed")
  os.makedirs(os.path.join(workdir, "checkpoints"))
  shutil.copytree(os.path.join(ref, "checkpoints", "2"), os.path.join(workdir, "checkpoints", "2"))
  os.environ["JAXCNN_CACHE"] = cache
  try:
    assert run.main(stage1_args(birds[0], workdir)) == 0
  finally:
    os.environ.pop("JAXCNN_CACHE")
  logged = [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  assert logged == [3, 4]
  chex.assert_trees_all_equal(checkpoint_state(workdir), checkpoint_state(ref))


def test_stage2_refines_the_trained_stage1(birds, stage1, tmp_path):
  stage1_dir, _ = stage1
  workdir = str(tmp_path / "stage2")
  args = ["--exp=stackgan_cub_stage2", f"--workdir={workdir}", f"--config.data.data_dir={birds[0]}",
          f"--config.stackgan.stage1_workdir={stage1_dir}", "--config.data.image_size=16", "--config.model.r_num=1",
          "--config.model.encoder_downs=1", "--config.train.steps=2", "--config.eval.every=0",
          "--config.checkpoint.every=0", "--config.gan.fid_samples=0", *TINY]
  assert run.main(args) == 0
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["step"] == 2 and np.isfinite(summary["eval/d_real"])
  state = checkpoint_state(workdir)
  # Stage I rides along frozen: exactly the generator of the Stage-I checkpoint.
  chex.assert_trees_all_equal(state["model_state"]["stage1"]["params"]["generator"],
                              checkpoint_state(stage1_dir)["params"]["generator"])
  assert os.path.exists(os.path.join(workdir, "plots", "samples_step000002.png"))
  assert os.path.exists(os.path.join(workdir, "plots", "samples_stage1_step000002.png"))


@pytest.mark.parametrize("size, extractor_size", [(8, 8), (32, 32), (64, 32), (256, 32)])
def test_feature_extractor_sees_at_most_32x32(size, extractor_size):
  """Above 32x32 the extractor (which resizes to 32 itself) trains on the 32x32 data: no 256x256 split in memory."""
  config = get_experiment("stackgan_cub")[0]
  config.data.image_size = size
  task = get_task(config, data_lib.dataset_info("cub_stackgan"))
  assert task.extractor_data_config().image_size == extractor_size
  assert config.data.image_size == size          # the run's own config is left alone


def test_without_data_dir_the_error_names_the_setting(tmp_path):
  with pytest.raises(UserError, match=r"set data.data_dir to the StackGAN birds folder.*char-CNN-RNN-embeddings"):
    run.main(["--exp=stackgan_cub", f"--workdir={tmp_path}", "--config.train.batch_size=8"])


def test_embedding_size_mismatch_is_a_user_error(birds, tmp_path):
  with pytest.raises(UserError, match="embeddings are 1024-d but stackgan.embed_dim=16"):
    run.main(stage1_args(birds[0], str(tmp_path), steps=1) + ["--config.stackgan.embed_dim=16",
                                                              "--config.gan.fid_samples=0"])


def test_missing_files_exit_2_with_one_line_naming_them(birds, tmp_path):
  partial = str(tmp_path / "birds")
  shutil.copytree(birds[0], partial)
  os.remove(os.path.join(partial, "train", embeddings.EMBEDDING_FILE))
  out = subprocess.run([sys.executable, "-m", "experiments.run", "--exp=stackgan_cub", f"--workdir={tmp_path / 'w'}",
                        f"--config.data.data_dir={partial}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: CUB/StackGAN data incomplete")
  assert os.path.join(partial, "train", embeddings.EMBEDDING_FILE) in last
  assert "filenames.pickle" in last and "bounding_boxes.txt" in last   # the expected layout is named too
  # A named image that is missing is reported when the split is opened, not in a reader thread.
  key = pickle.load(open(os.path.join(birds[0], "test", "filenames.pickle"), "rb"))[0]
  shutil.copy(os.path.join(birds[0], "train", embeddings.EMBEDDING_FILE), os.path.join(partial, "train"))
  os.remove(os.path.join(partial, "CUB_200_2011", "images", key + ".jpg"))
  with pytest.raises(UserError, match=r"1 of the 6 images named by .*test/filenames.pickle are missing"):
    embeddings.CubEmbeddingSource(partial, "test")
