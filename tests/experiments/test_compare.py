"""python -m experiments.compare: trains each family's recipe through the trainer, writes the table (Markdown,
CSV) and the accuracy-vs-cost plot, and reads finished workdirs back instead of retraining them."""
import csv
import os

import pytest

from experiments import compare
from jaxcnn.errors import UserError


def _rows(workdir):
  with open(os.path.join(workdir, "compare.csv")) as f:
    return list(csv.DictReader(f))


def test_digits_suite_end_to_end_and_resumable(tmp_path, capsys):
  workdir = str(tmp_path / "cmp")
  args = ["--suite=digits", "--steps=3", "--only=lenet_digits", f"--workdir={workdir}"]
  assert compare.main(args) == 0
  (row,) = _rows(workdir)
  assert row["family"] == "LeNet-5" and row["model"] == "lenet5" and row["steps"] == "3"
  assert row["parameters"] == "60000" and 0 <= float(row["accuracy"]) <= 1
  # LeNet-5 at 32x32: C1 alone is 28*28*6*25 multiply-adds; XLA counts ~0.86 MFLOPs in all.
  assert 0.5e-3 < float(row["gflops_per_image"]) < 2e-3
  assert float(row["train_images_per_s"]) > 0
  assert os.path.getsize(os.path.join(workdir, "plots", "accuracy_vs_cost.png")) > 1000
  assert "| LeNet-5 | lenet_digits | lenet5 | 3 |" in open(os.path.join(workdir, "compare.md")).read()
  summary = os.path.join(workdir, "lenet_digits", "summary.json")
  stamp = os.path.getmtime(summary)
  assert compare.main(args) == 0  # finished: read back, not retrained
  assert os.path.getmtime(summary) == stamp and _rows(workdir) == [row]


@pytest.mark.parametrize("args,match", [(["--suite=imagenet"], "unknown suite"),
                                        (["--suite=digits", "--steps=0"], "--steps must be"),
                                        (["--suite=digits", "--only=vgg16_bn_cifar"], "unknown experiment")])
def test_bad_arguments_are_user_errors(args, match):
  with pytest.raises(UserError, match=match):
    compare.parse_args(args)


@pytest.mark.slow
def test_whole_digits_suite(tmp_path):
  workdir = str(tmp_path / "cmp")
  assert compare.main(["--suite=digits", "--steps=30", f"--workdir={workdir}"]) == 0
  assert [r["experiment"] for r in _rows(workdir)] == ["lenet_digits", "resnet_digits", "vit_digits"]
