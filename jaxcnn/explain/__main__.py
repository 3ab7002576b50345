"""python -m jaxcnn.explain: attribution pictures for a folder of images.

    python -m jaxcnn.explain --workdir=RUN --images=DIR --method=gradcam [--target=CLASS] [--layer=NAME]
    python -m jaxcnn.explain --model=resnet50 --weights=resnet50.pth --images=DIR --method=ig --target=207

The model comes from a jaxcnn workdir (config.json's model and data sections, the latest checkpoint; images
normalised as the run's data were) or from converted weights (`--model` + `--weights`, a torchvision/timm
state dict or a .npz, loaded as fine-tuning loads them; ImageNet normalisation unless --normalize says
otherwise). Images (png, jpg, ...) are stretched to the run's image size (--size for converted weights).

--target: a class index (model labels: a detector's labels count background as 0), default each image's
predicted class (classification), its most frequent predicted class (segmentation: that class's pixels) or
its top detection's label (detection: the score of the detection matching that box).

Writes into --out (default RUN/explain, or ./explain with --model), per image `<name>_<method>.png` (the
map over the image) and `<name>_<method>_grid.png` (image | map | overlay); --method=deconvnet also writes
`deconvnet_<layer>_top9.png`: for each of --channels (default the 8 strongest) the 9 images of the folder
that activate it most, projected to pixel space beside the image patches (Zeiler & Fergus, fig. 2).
Bad input (unknown method or layer, class out of range, no images) exits with status 2 and one line.
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.eval import grids

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm")
NORMALIZE = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "unit": ((0.0,), (1.0,)),
             "symmetric": ((0.5,), (0.5,))}


def parse(argv):
  from jaxcnn import explain
  p = argparse.ArgumentParser(prog="python -m jaxcnn.explain", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="")
  p.add_argument("--model", default="", help="registered model name (with --weights)")
  p.add_argument("--weights", default="", help="converted weights file (torch .pth/.safetensors, .npz)")
  p.add_argument("--images", required=True)
  p.add_argument("--method", default="gradcam", help=", ".join(explain.METHODS))
  p.add_argument("--target", default="", help="class index (default: the prediction)")
  p.add_argument("--layer", default="", help="target layer path (default: the family's)")
  p.add_argument("--out", default="")
  p.add_argument("--size", type=int, default=224, help="image size for --model")
  p.add_argument("--normalize", default="imagenet", help="for --model: " + ", ".join(NORMALIZE))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=50, help="integrated gradients")
  p.add_argument("--samples", type=int, default=25, help="smoothgrad")
  p.add_argument("--window", type=int, default=16, help="occlusion window (stride = window / 2)")
  p.add_argument("--channels", default="", help="deconvnet: comma-separated channels for the top-9 grids")
  args = p.parse_args(argv)
  if args.method not in explain.METHODS:
    raise unknown("method", args.method, explain.METHODS)
  if bool(args.workdir) == bool(args.model):
    raise UserError("give either --workdir=RUN or --model=NAME --weights=FILE")
  if args.model and not args.weights:
    raise UserError("--model needs --weights (a converted weights file)")
  if args.normalize not in NORMALIZE:
    raise unknown("normalization", args.normalize, NORMALIZE)
  if args.batch < 1 or args.size < 1:
    raise UserError("--batch and --size must be positive")
  return args


def load_model(args):
  """(model, variables, (H, W), channels, mean, std, out_dir)."""
  from jaxcnn.registry import create_model
  from jaxcnn.train.finetune import load_pretrained
  if args.model:
    mean, std = NORMALIZE[args.normalize]
    return (create_model(args.model), load_pretrained(args.weights, args.model), (args.size, args.size), 3,
            mean, std, args.out or "explain")
  import ml_collections
  from jaxcnn.data.config import resolve
  from jaxcnn.tasks.base import model_kwargs
  path = os.path.join(args.workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"--workdir {args.workdir}: no config.json (not a jaxcnn run)")
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  spec = resolve(cfg.data)
  mean, std = spec.mean_std()
  model = create_model(cfg.model.name, **model_kwargs(cfg.model, cfg.train))
  return (model, load_pretrained(args.workdir, cfg.model.name), spec.image_hw, spec.channels, mean, std,
          args.out or os.path.join(args.workdir, "explain"))


def load_images(folder: str, hw, channels: int):
  """(names, uint8 [N, H, W, C]) of the folder's images, stretched to hw."""
  from PIL import Image
  if not os.path.isdir(folder):
    raise UserError(f"--images: no such directory: {folder}")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
  if not names:
    raise UserError(f"--images: no image files ({', '.join(IMAGE_EXTS)}) in {folder}")
  out = []
  for n in names:
    with Image.open(os.path.join(folder, n)) as im:
      im = im.convert("L" if channels == 1 else "RGB").resize((hw[1], hw[0]), Image.BILINEAR)
      out.append(np.asarray(im, np.uint8).reshape(hw[0], hw[1], channels))
  return [os.path.splitext(n)[0] for n in names], np.stack(out)


def make_target(model, variables, x, index: str):
  """The explain.Target of the batch: kind from the model's output, class from --target or the prediction."""
  from jaxcnn import explain
  try:
    index = int(index) if index != "" else None
  except ValueError:
    raise UserError(f"--target must be a class index, got '{index}'") from None
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  if callable(getattr(type(model), "postprocess", None)):
    det = model.postprocess(out, x.shape[1:3])
    labels, boxes = det["labels"], det["boxes"]
    if index is not None:
      best = jnp.argmax(jnp.where(det["valid"] & (labels == index), det["scores"], -1.0), axis=1)
    else:
      best = jnp.zeros(len(x), jnp.int32)
    pick = lambda a: jnp.take_along_axis(a, best.reshape(-1, *([1] * (a.ndim - 1))), axis=1)[:, 0]
    kind, classes, boxes, num = "box", pick(labels), pick(boxes), getattr(model, "num_classes", None)
  elif isinstance(out, dict) and "out" in out:
    pred = jnp.argmax(out["out"], axis=-1).reshape(len(x), -1)
    num = out["out"].shape[-1]
    classes = jax.vmap(lambda p: jnp.argmax(jnp.bincount(p, length=num)))(pred)
    kind, boxes = "pixels", None
  else:
    logits = out["logits"] if isinstance(out, dict) else out
    kind, classes, boxes, num = "class", jnp.argmax(logits, axis=-1), None, logits.shape[-1]
  if index is not None:
    classes = jnp.full(len(x), index, jnp.int32)
    if num is not None:
      explain.check_classes(classes, num)
  return explain.Target(kind, classes.astype(jnp.int32), boxes)


def to_display(method: str, attribution, hw) -> np.ndarray:
  """[B, H, W, 3] float in [0, 1]: CAMs and saliency as a jet heat map, guided / deconvnet maps as images."""
  import matplotlib
  from jaxcnn.explain import cam
  a = jnp.asarray(attribution[0] if isinstance(attribution, tuple) else attribution, jnp.float32)
  if method in ("guided_backprop", "guided_gradcam", "deconvnet"):
    # pytorch-grad-cam's deprocess_image: standardise, 0.1 std around grey.
    axes = (1, 2, 3)
    z = (a - a.mean(axes, keepdims=True)) / (a.std(axes, keepdims=True) + 1e-7)
    rgb = np.clip(np.asarray(z) * 0.1 + 0.5, 0, 1)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
  if a.ndim == 4:
    a = jnp.max(jnp.abs(a), axis=-1)  # saliency: the largest |attribution| over the channels
  if a.shape[1:3] != tuple(hw):
    a = cam.upsample(a, hw)
  heat = np.asarray(cam.normalize(a))
  return matplotlib.colormaps["jet"](heat)[..., :3]


def write_pictures(out_dir, names, images, method, display):
  rgb = images.astype(np.float32) / 255.0
  rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
  for name, img, d in zip(names, rgb, display):
    overlay = 0.5 * img + 0.5 * d
    grids.save_grid(os.path.join(out_dir, f"{name}_{method}.png"), overlay[None], 1, (0.0, 1.0))
    grids.save_grid(os.path.join(out_dir, f"{name}_{method}_grid.png"), np.stack([img, d, overlay]), 3,
                    (0.0, 1.0))


def top9_picture(out_dir, model, variables, x, images, layer, channels):
  """The deconvnet figure: per channel, 3x3 projections beside 3x3 image patches, one row per channel."""
  from jaxcnn.explain import deconvnet
  maxima = deconvnet.channel_maxima(model, variables, x, layer)
  bad = [c for c in channels if not 0 <= c < maxima.shape[1]]
  if bad:
    raise UserError(f"--channels: {bad[0]} is out of range: layer {layer} has channels 0..{maxima.shape[1] - 1}")
  channels = channels or list(np.argsort(-maxima.max(axis=0))[:8])
  rows = []
  for ch, (top, proj) in deconvnet.top_activations(model, variables, x, layer, channels, maxima=maxima).items():
    shown = to_display("deconvnet", proj, proj.shape[1:3])
    crops_p, crops_i = deconvnet.support_crops(proj, shown, images[top].astype(np.float32) / 255.0)
    crops_i = np.repeat(crops_i, 3, -1) if crops_i.shape[-1] == 1 else crops_i
    pad = lambda c: np.concatenate([c, np.ones((9 - len(c), *c.shape[1:]), c.dtype)]) if len(c) < 9 else c
    scale = max(1, -(-32 // crops_p.shape[1]))  # small patches enlarged for viewing
    left = grids.grid(grids.to_uint8(pad(crops_p), (0, 1)), 3, scale=scale)
    right = grids.grid(grids.to_uint8(pad(crops_i), (0, 1)), 3, scale=scale)
    rows.append(np.concatenate([left, right], axis=1))
  width = max(r.shape[1] for r in rows)
  picture = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                            for r in rows])
  from PIL import Image
  path = os.path.join(out_dir, f"deconvnet_{layer.replace('/', '.')}_top9.png")
  Image.fromarray(picture).save(path)
  return path


def main(argv=None):
  from jaxcnn import explain
  args = parse(argv)
  model, variables, hw, channels, mean, std, out_dir = load_model(args)
  names, images = load_images(args.images, hw, channels)
  x_all = ((images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
  options = {"ig": {"steps": args.steps}, "smoothgrad": {"samples": args.samples},
             "occlusion": {"window": args.window, "stride": max(1, args.window // 2)}}.get(args.method, {})
  os.makedirs(out_dir, exist_ok=True)
  layer = explain.resolve_layer(model, variables, jnp.asarray(x_all[:1]), args.layer) \
      if explain.METHODS[args.method][1] else None
  gaps = []
  for i in range(0, len(images), args.batch):
    x = jnp.asarray(x_all[i:i + args.batch])
    target = make_target(model, variables, x, args.target)
    result = explain.run(model, variables, x, target, method=args.method, layer=layer, **options)
    write_pictures(out_dir, names[i:i + args.batch], images[i:i + args.batch], args.method,
                   to_display(args.method, result, hw))
    if args.method == "ig":
      gaps += np.asarray(result[1]).tolist()
  if gaps:
    print(f"integrated gradients ({args.steps} steps): completeness gap sum(attr) - (F(x) - F(0)), largest |gap| "
          f"{max(map(abs, gaps)):.3g} over {len(gaps)} images")
  if args.method == "deconvnet":
    channels = [int(c) for c in args.channels.split(",") if c.strip()]
    print(top9_picture(out_dir, model, variables, jnp.asarray(x_all), images, layer, channels))
  print(f"wrote {len(images)} x 2 pictures to {out_dir} (method {args.method}"
        f"{f', layer {layer}' if layer else ''})")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
