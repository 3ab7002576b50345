"""python -m jaxcnn.bench prints the agreed JSON keys with sane values."""
import json

from jaxcnn import bench


def test_bench_prints_one_json_line(capsys):
  assert bench.main(["--model=lenet5_modern", "--batch=8", "--image-size=28", "--channels=1", "--steps=2",
                     "--warmup=0"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  r = json.loads(lines[0])
  for key in ("compile_s", "step_ms_median", "images_per_s", "flops_per_step", "flops_per_s"):
    assert r[key] > 0, key
  # Forward + backward of a small CNN: more than the 2x forward conv FLOPs XLA counts for 8 images at least.
  assert r["flops_per_step"] > 8 * 2 * 28 * 28 * 25 * 6
  assert abs(r["images_per_s"] - 8 / (r["step_ms_median"] / 1e3)) < 1e-3 * r["images_per_s"] + 0.1


def test_bench_rejects_unknown_model(capsys):
  assert bench.main(["--model=nosuchnet"]) == 2
  assert "unknown model 'nosuchnet'" in capsys.readouterr().err


def test_bench_rejects_bad_counts(capsys):
  assert bench.main(["--model=lenet5_modern", "--steps=0"]) == 2
  assert "--steps (>= 1)" in capsys.readouterr().err
