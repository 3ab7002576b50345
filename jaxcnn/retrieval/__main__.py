"""python -m jaxcnn.retrieval index|query: text search over the images and video keyframes of a folder.

    python -m jaxcnn.retrieval index VIDEOS/ --index=idx --model=clip_vit_b32 --weights=ViT-B-32-quickgelu.safetensors
    python -m jaxcnn.retrieval index VIDEOS/ --index=idx --workdir=workdirs/clip_digits   # a contrastive run
    python -m jaxcnn.retrieval query --index=idx "a dog catching a frisbee" "a red car" -k 8 --sheet=hits.png

`index` keeps a video's first frame, one frame every --every seconds and the first frame of every shot
(--shot-threshold: mean absolute luma difference between consecutive frames, 0 to 1), embeds them and
writes the index directory (see jaxcnn/retrieval/store.py); run again on the same folder, it embeds only
new and changed files. `query` uses the model the index was built with (another one is refused), prints
the top k frames per text (file, time, score) and writes a contact sheet PNG of them.
Wrong input (a file that cannot be decoded, an empty folder, another model's index, weights of another
architecture) ends with one line on stderr and exit status 2; an existing index is then left as it was.
"""
import argparse
import json
import logging
import os
import sys

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")


def _model_flags(p, required: bool):
  what = "" if required else " (default: the model the index was built with)"
  p.add_argument("--workdir", default="", help="a jaxcnn contrastive run: its latest checkpoint" + what)
  p.add_argument("--model", default="", help="registered image-text model, e.g. clip_vit_b32" + what)
  p.add_argument("--weights", default="", help="open_clip / OpenAI weights (.safetensors, .pt, .bin) for --model")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxcnn.retrieval", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  ix = sub.add_parser("index", help="embed the images and video keyframes of a folder",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ix.add_argument("folder", help="folder searched recursively for images and videos")
  ix.add_argument("--index", required=True, help="index directory to write (replaced atomically)")
  _model_flags(ix, required=True)
  ix.add_argument("--every", type=float, default=1.0,
                  help="seconds between keyframes within a shot (0: shot starts only)")
  ix.add_argument("--shot-threshold", type=float, default=0.1, help="frame difference that starts a shot (0: off)")
  ix.add_argument("--min-shot", type=float, default=0.5, help="seconds: shortest shot")
  ix.add_argument("--batch-size", type=int, default=32, help="frames per jitted batch (rounded up to the device count)")
  ix.add_argument("--rebuild", action="store_true", help="embed every file again (also replaces another model's index)")
  ix.add_argument("--skip-bad", action="store_true", help="skip undecodable files with a warning instead of stopping")
  ix.add_argument("--no-progress", action="store_true", help="no progress bar")
  q = sub.add_parser("query", help="the frames that best match texts",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  q.add_argument("texts", nargs="+", help="one or more descriptions")
  q.add_argument("--index", required=True)
  q.add_argument("-k", type=int, default=8, help="frames per text")
  q.add_argument("--search", default="auto", help="exact (numpy) | faiss | auto (faiss for large indexes)")
  q.add_argument("--sheet", default="contact_sheet.png", help="contact sheet PNG ('' for none)")
  q.add_argument("--json", action="store_true", help="print one JSON object per text instead of a table")
  _model_flags(q, required=False)
  return p


def index_command(args) -> None:
  from jaxcnn.retrieval import build, encoder as encoder_lib, frames
  sampling = frames.Sampling(every=args.every, shot_threshold=args.shot_threshold, min_shot=args.min_shot)
  frames.find_media(args.folder)  # an empty or missing folder fails before the model loads
  encoder = encoder_lib.load(args.workdir, args.model, args.weights)
  summary = build.build_index(args.folder, args.index, encoder, sampling, batch_size=args.batch_size,
                              rebuild=args.rebuild, skip_bad=args.skip_bad, progress=not args.no_progress)
  print(f"indexed {summary['frames']} frames from {summary['files']} files ({summary['reused_files']} unchanged, "
        f"{summary['skipped_files']} skipped) with {encoder.describe()} in {summary['wall_s']:.1f} s "
        f"({summary['cpu_s']:.1f} CPU s): {os.path.abspath(args.index)}")


def query_command(args) -> None:
  from jaxcnn.retrieval import encoder as encoder_lib, frames, search, store
  index = store.read(args.index)
  if args.workdir or args.model or args.weights:
    encoder = encoder_lib.load(args.workdir, args.model, args.weights)
  else:
    encoder = encoder_lib.from_identity(index.meta["model"], args.index)
  store.check_model(index.meta, encoder.identity, args.index, "query with the index's model, or index again")
  scores, ids = search.top_k(index.embeddings, encoder.embed_texts(args.texts), args.k, args.search)
  rows = []
  for text, s, i in zip(args.texts, scores, ids):
    hits = [{**index.records[j], "path": os.path.join(index.root, index.records[j]["file"]), "score": float(v)}
            for v, j in zip(s, i)]
    _print_hits(text, hits, args.json)
    rows.append((text, hits))
  if args.sheet:
    cells = [(t, [(frames.load_frame(index.root, h), search.caption(h, h["score"])) for h in hits]) for t, hits in rows]
    print(f"contact sheet: {search.contact_sheet(args.sheet, cells)}", file=sys.stderr)


def _print_hits(text, hits, as_json: bool):
  from jaxcnn.retrieval.search import format_time
  if as_json:
    print(json.dumps({"query": text, "hits": hits}))
    return
  print(f"query: {text}")
  for rank, h in enumerate(hits, 1):
    where = "image" if h["reason"] == "image" else f"{format_time(h['time'])} (frame {h['frame']})"
    print(f"  {rank:2d}. {h['score']:.4f}  {h['path']}  {where}")


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    (index_command if args.command == "index" else query_command)(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # the index is written only at the end, atomically: nothing half-done is left
    print("interrupted; no index was changed", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
  for noisy in ("jax", "absl", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  sys.exit(main())
