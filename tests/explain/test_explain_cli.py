"""python -m jaxcnn.explain on a trained workdir and on converted torchvision weights; bad input exits 2."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcnn.errors import UserError
from jaxcnn.explain.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  from sklearn.datasets import load_digits
  folder = tmp_path_factory.mktemp("digit_images")
  digits = load_digits()
  for i in range(3):
    Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(folder / f"d{i}.png")
  return str(folder)


def test_gradcam_pictures(digits_run, images):
  assert main([f"--workdir={digits_run}", f"--images={images}", "--method=gradcam", "--target=3"]) == 0
  written = sorted(os.listdir(os.path.join(digits_run, "explain")))
  assert written == sorted(f"d{i}_gradcam{s}.png" for i in range(3) for s in ("", "_grid"))
  grid = np.asarray(Image.open(os.path.join(digits_run, "explain", "d0_gradcam_grid.png")))
  assert grid.ndim == 3 and grid.shape[1] > 2 * grid.shape[0]  # image | map | overlay


@pytest.mark.slow
def test_deconvnet_and_ig_pictures(digits_run, images, tmp_path, capsys):
  assert main([f"--workdir={digits_run}", f"--images={images}", "--method=deconvnet", "--layer=C1",
               "--channels=0,2", f"--out={tmp_path}"]) == 0
  assert os.path.exists(tmp_path / "deconvnet_C1_top9.png")
  with pytest.raises(UserError, match="--channels: 6 is out of range: layer C1 has channels 0..5"):
    main([f"--workdir={digits_run}", f"--images={images}", "--method=deconvnet", "--layer=C1", "--channels=6",
          f"--out={tmp_path}"])
  assert main([f"--workdir={digits_run}", f"--images={images}", "--method=ig", "--steps=8",
               f"--out={tmp_path}"]) == 0
  assert "completeness gap" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--method=gradcan"], "unknown method 'gradcan'; did you mean gradcam"),
    (["--layer=C9"], "unknown target layer 'C9'.*known: C1, C3"),
    (["--target=10"], "target class 10 is out of range: the model has classes 0..9"),
    (["--target=-1"], "target class -1 is out of range"),
])
def test_bad_input(digits_run, images, args, message):
  with pytest.raises(UserError, match=message):
    main([f"--workdir={digits_run}", f"--images={images}", *args])


def test_bad_input_is_one_line_and_exit_status_2(digits_run, images):
  proc = subprocess.run([sys.executable, "-m", "jaxcnn.explain", f"--workdir={digits_run}", f"--images={images}",
                         "--layer=nope"], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: unknown target layer 'nope'") and len(proc.stderr.splitlines()) == 1


@pytest.mark.slow
def test_converted_torchvision_weights(images, tmp_path):
  """--model/--weights: a torchvision resnet18 state dict (random weights) through jaxcnn.convert."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
  assert main(["--model=resnet18", f"--weights={tmp_path / 'r18.pth'}", f"--images={images}", "--size=64",
               "--method=gradcampp", f"--out={tmp_path / 'out'}"]) == 0
  assert len(os.listdir(tmp_path / "out")) == 6
