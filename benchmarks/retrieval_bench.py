"""Retrieval tool throughput: indexing (frames/s) and query latency over a large index.

    python benchmarks/retrieval_bench.py --part=search --rows=100000 --dim=512   # exact (numpy) vs FAISS
    python benchmarks/retrieval_bench.py --part=index --model=clip_vit_b32 --seconds=60

search: `rows` random L2-normalised float32 embeddings; per method the median wall and CPU time (all
threads, `time.process_time`) of one `search.top_k` call for 1 and for 16 query texts, k=10, after a
warm-up. FAISS is `search.faiss_top_k` (`faiss.knn`, no index built; OpenMP threads capped at the
number of queries). The methods' top-k are checked to be the same.
index: a synthetic H.264 video (`seconds` long, 25 fps, 320x240, a shot change every 5 s, moving shapes),
indexed by `build.build_index` with `model` at random weights (the cost does not depend on the values):
decoding + keyframe selection alone (video frames/s), the embedding of one full batch (frames/s, after
its compilation, timed apart), then the whole index run (keyframes/s: decoding, preprocessing, embedding
and writing; the compiled batch function is re-used, so compilation is not in it).
Every figure is printed as one JSON line; the machine's load average is printed with them.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _timed(fn, repeats: int):
  """(median wall s, median CPU s, last result) of `repeats` calls after one warm-up call."""
  fn()
  walls, cpus = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return statistics.median(walls), statistics.median(cpus), out


def bench_search(rows: int, dim: int, repeats: int):
  import faiss
  from jaxcnn.retrieval import search
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((rows, dim), np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  for nq in (1, 16):
    q = rng.standard_normal((nq, dim), np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    results = {}
    for method, fn in (("exact", search.exact_top_k), ("faiss", search.faiss_top_k)):
      wall, cpu, out = _timed(lambda: fn(emb, q, 10), repeats)
      results[method] = out[1]
      _emit(part="search", method=method, rows=rows, dim=dim, queries=nq, k=10, wall_ms=wall * 1e3,
            cpu_ms=cpu * 1e3, faiss_threads=faiss.omp_get_max_threads())
    assert np.array_equal(results["exact"], results["faiss"]), "exact and FAISS top-k differ"


def write_video(path: str, seconds: int, fps: int = 25, size=(320, 240)):
  """Moving coloured rectangles on a background whose colour changes every 5 s (a cut)."""
  import av
  rng = np.random.default_rng(0)
  w, h = size
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(seconds * fps):
      if i % (5 * fps) == 0:
        background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
      frame = np.empty((h, w, 3), np.uint8)
      frame[:] = background
      x = (i * 4) % (w - 60)
      frame[80:160, x:x + 60] = colour
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode())


def random_encoder(name: str):
  import jax
  import jax.numpy as jnp
  from jaxcnn.models.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
  from jaxcnn.registry import create_model
  from jaxcnn.retrieval import encoder as encoder_lib
  model = create_model(name)
  s = model.image_size
  tokens = jnp.zeros((1, model.context_length), jnp.int32)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, s, s, 3)), tokens))(jax.random.PRNGKey(0))
  identity = {"source": "random", "kind": "weights", "model": name, "params_sha256": "0" * 64}
  return encoder_lib.Encoder(model, variables, identity, (s, s), np.asarray(OPENAI_CLIP_MEAN, np.float32),
                             np.asarray(OPENAI_CLIP_STD, np.float32), 3, model.context_length)


def bench_index(model: str, seconds: int, batch_size: int):
  from jaxcnn.retrieval import build, frames
  sampling = frames.Sampling()
  with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "videos"))
    write_video(os.path.join(tmp, "videos", "synthetic.mp4"), seconds)
    w, c = time.perf_counter(), time.process_time()
    picked = list(frames.frames(os.path.join(tmp, "videos"), "synthetic.mp4", sampling))
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    _emit(part="decode", video_frames=seconds * 25, keyframes=len(picked), wall_s=wall, cpu_s=cpu,
          video_frames_per_s=seconds * 25 / wall, video_frames_per_cpu_s=seconds * 25 / cpu)
    encoder = random_encoder(model)
    embed = encoder.image_embedder(batch_size)
    batch = np.zeros((embed.batch_size, *encoder.image_hw, 3), np.float32)
    w = time.perf_counter()
    np.asarray(embed(batch))  # compile + first batch
    first = time.perf_counter() - w
    wall, cpu, _ = _timed(lambda: np.asarray(embed(batch)), 5)
    _emit(part="embed", model=model, batch=embed.batch_size, compile_and_first_batch_s=first, wall_s=wall,
          cpu_s=cpu, frames_per_s=embed.batch_size / wall, frames_per_cpu_s=embed.batch_size / cpu)
    summary = build.build_index(os.path.join(tmp, "videos"), os.path.join(tmp, "index"), encoder, sampling,
                                batch_size=batch_size, progress=False)
    _emit(part="index", model=model, batch=embed.batch_size, keyframes=summary["frames"],
          wall_s=summary["wall_s"], cpu_s=summary["cpu_s"], keyframes_per_s=summary["frames"] / summary["wall_s"],
          keyframes_per_cpu_s=summary["frames"] / summary["cpu_s"],
          video_seconds_per_s=seconds / summary["wall_s"])


def _emit(**fields):
  fields["load_avg"] = round(os.getloadavg()[0], 2)
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}), flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--part", default="all", choices=("all", "search", "index"))
  p.add_argument("--rows", type=int, default=100_000)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--model", default="clip_vit_b32")
  p.add_argument("--seconds", type=int, default=60)
  p.add_argument("--batch-size", type=int, default=32)
  args = p.parse_args(argv)
  if args.part in ("all", "search"):
    bench_search(args.rows, args.dim, args.repeats)
  if args.part in ("all", "index"):
    bench_index(args.model, args.seconds, args.batch_size)


if __name__ == "__main__":
  main()
