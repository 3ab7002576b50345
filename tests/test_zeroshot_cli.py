"""python -m jaxcnn.zeroshot: accuracy against a direct computation on a plain classification dataset, bad input
in one line with exit status 2, offline failure at once."""
import json
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxcnn import data as data_lib
from jaxcnn import zeroshot
from jaxcnn.data import tokenizer
from jaxcnn.eval import templates
from jaxcnn.models.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from jaxcnn.registry import create_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """Random clip_tiny parameters saved as a checkpoint directory (what finetune.load_pretrained reads)."""
  model = create_model("clip_tiny")
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 32), np.int32))
  directory = tmp_path_factory.mktemp("clip_tiny")
  mngr = ocp.CheckpointManager(str(directory / "checkpoints"), item_names=("state",))
  mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params["params"]})))
  mngr.wait_until_finished()
  mngr.close()
  return str(directory), model, params


def test_accuracy_on_plain_digits_equals_a_direct_computation(weights, tmp_path, capsys):
  path, model, variables = weights
  out = tmp_path / "result.json"
  assert zeroshot.main(["--model=clip_tiny", f"--weights={path}", "--data=digits", "--templates=digits",
                        "--split=test[:64]", f"--out={out}", "--batch_size=32"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result == json.loads(out.read_text())
  assert result["examples"] == 64 and result["data"] == "digits"
  # by hand: the images as the CLI reads them (32x32, grey repeated, OpenAI's mean/std), the ensembled classifier
  source = data_lib.get_source("digits", "test[:64]")
  from jaxcnn.data import transforms
  images = transforms.resize_batch(source.images, (32, 32)).astype(np.float32) / 255.0
  images = (np.repeat(images, 3, -1) - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
  img = np.array(model.apply(variables, images.astype(np.float32), method="encode_image"))
  img /= np.linalg.norm(img, axis=-1, keepdims=True)
  classes = []
  for name in templates.class_names("digits"):
    e = np.array(model.apply(variables, tokenizer.tokenize([t.format(name) for t in templates.DIGITS_TEMPLATES],
                                                             32), method="encode_text"))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    classes.append(e.mean(0) / np.linalg.norm(e.mean(0)))
  accuracy = np.mean(np.argmax(img @ np.stack(classes).T, -1) == source.labels)
  np.testing.assert_allclose(result["zeroshot_accuracy"], accuracy, atol=1 / 64 + 1e-9)


def one_error_line(capsys, argv):
  assert zeroshot.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  return err


def test_bad_input_is_one_line_exit_2(weights, capsys):
  path = weights[0]
  assert "weights of another architecture, not clip_tiny_rn" in one_error_line(
      capsys, ["--model=clip_tiny_rn", f"--weights={path}", "--data=digits"])
  assert "unknown dataset 'digitz'" in one_error_line(capsys, ["--model=clip_tiny", f"--weights={path}",
                                                               "--data=digitz"])
  assert "no such file" in one_error_line(capsys, ["--model=clip_tiny", "--weights=/nope.pt", "--data=digits"])
  assert "needs a dataset with classes" in one_error_line(
      capsys, ["--model=clip_tiny", f"--weights={path}", "--data=image_text_csv"])
  t0 = time.time()
  assert "cifar10" in one_error_line(capsys, ["--model=clip_tiny", f"--weights={path}", "--data=cifar10"])
  assert time.time() - t0 < 30   # offline: fails at once, before any model work
