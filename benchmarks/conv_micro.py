"""Single convolution layers on CPU: forward, input gradient, weight gradient, side by side.

    python benchmarks/conv_micro.py [--rounds=5] [--layers=r18_3x3,mbv2_dw_s2,...] [--no-torch]
        [--impls=xla,rewrite,onednn,jaxcnn]

For each layer of the target models (ResNet-18 CIFAR, ResNet-50, MobileNetV2, DeepLabV3-ResNet50,
ViT patch embedding, a DCGAN transposed convolution) it times these
implementations: `xla` (plain `lax.conv_general_dilated` / `lax.conv_transpose`),
`rewrite` (`cpu_conv`'s pure-XLA formulations, `JAXCNN_CPU_CONV=xla`), `onednn`
(`jaxcnn.layers.onednn.conv`, not for transposed layers), `jaxcnn`
(`jaxcnn.layers.conv` as configured, by default oneDNN where it applies) and `torch`
(`torch.nn.functional.conv2d` / `conv_transpose2d` on channels_last tensors,
backward through `aten.convolution_backward`, 2 threads). JAX and PyTorch run in
two worker processes that take turns, one timed call at a time, so both see the
same load; each number is a median over `--rounds` turns. Prints one JSON line
per layer and a table (ms; `vs torch` = torch ms / jaxcnn ms, >1: jaxcnn faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name: (batch, size, in channels, out channels, kernel, stride, groups, transposed[, dilation])
LAYERS = {
    "r18c_3x3_64": (128, 32, 64, 64, 3, 1, 1, False),
    "r18c_3x3_s2": (128, 32, 64, 128, 3, 2, 1, False),
    "r18c_1x1_s2": (128, 32, 64, 128, 1, 2, 1, False),
    "r18c_3x3_512": (128, 4, 512, 512, 3, 1, 1, False),
    "r50_stem_7x7": (16, 224, 3, 64, 7, 2, 1, False),
    "r50_1x1_64_256": (16, 56, 64, 256, 1, 1, 1, False),
    "r50_3x3_64": (16, 56, 64, 64, 3, 1, 1, False),
    "r50_3x3_256_s2": (16, 28, 256, 256, 3, 2, 1, False),
    "mbv2_dw_s2": (16, 112, 96, 96, 3, 2, 96, False),
    "mbv2_dw_144": (16, 56, 144, 144, 3, 1, 144, False),
    "mbv2_1x1_24_144": (16, 56, 24, 144, 1, 1, 1, False),
    "vit_patch4": (128, 32, 3, 192, 4, 4, 1, False),
    "resnext_3x3_g32": (16, 56, 128, 128, 3, 1, 32, False),
    "dcgan_convT_4x4_s2": (64, 8, 256, 128, 4, 2, 1, True),
    # DeepLabV3-ResNet50 at batch 4, 256x256 (output stride 8: 32x32 maps): stage 4's dilated 3x3, the
    # 1x1 convolutions around it, and the ASPP's atrous branches (2048 -> 256 at rates 12, 24, 36).
    "dl_3x3_512_d4": (4, 32, 512, 512, 3, 1, 1, False, 4),
    "dl_1x1_2048_512": (4, 32, 2048, 512, 1, 1, 1, False),
    "dl_1x1_512_2048": (4, 32, 512, 2048, 1, 1, 1, False),
    "dl_1x1_1024_256": (4, 32, 1024, 256, 1, 1, 1, False),
    "dl_1x1_256_1024": (4, 32, 256, 1024, 1, 1, 1, False),
    "aspp_r12": (4, 32, 2048, 256, 3, 1, 1, False, 12),
    "aspp_r24": (4, 32, 2048, 256, 3, 1, 1, False, 24),
    "aspp_r36": (4, 32, 2048, 256, 3, 1, 1, False, 36),
}
OPS = ("fwd", "dx", "dw")


def _padding(kernel, stride, dilation=1):
  """PyTorch padding giving the same output as the JAX side (SAME-like, patchify: none)."""
  return 0 if kernel == stride else dilation * (kernel - 1) // 2


def _spec(name):
  """LAYERS[name] with the dilation (default 1) filled in: a 9-tuple."""
  spec = LAYERS[name]
  return spec if len(spec) == 9 else spec + (1,)


class JaxWorker:
  """Compiled fwd / dx / dw functions of each layer for 'xla' and 'jaxcnn'."""

  def __init__(self):
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxcnn.layers import conv, cpu_conv, onednn
    self.jax, self.jnp, self.lax, self.conv, self.cpu_conv = jax, jnp, lax, conv, cpu_conv
    self.onednn = onednn if onednn.available() else None
    self.cache = {}

  def _conv_fns(self, spec):
    n, size, cin, cout, k, s, groups, transposed, d = spec
    jnp, lax, conv, cpu_conv = self.jnp, self.lax, self.conv, self.cpu_conv
    if transposed:
      pads = cpu_conv.transpose_pads((k, k), (s, s), "SAME", (1, 1))
      xla = lambda x, w: lax.conv_transpose(x, w, (s, s), "SAME", dimension_numbers=cpu_conv.NHWC)
      ours = lambda x, w: cpu_conv.conv_transpose_nhwc(x, w, (s, s), pads)
      fns = {"xla": xla, "rewrite": ours, "jaxcnn": ours}
      w_shape = (k, k, cin, cout)
    else:
      p = _padding(k, s, d)
      pad = ((p, p), (p, p))
      kw = dict(rhs_dilation=(d, d), dimension_numbers=cpu_conv.NHWC, feature_group_count=groups)
      xla = lambda x, w: lax.conv_general_dilated(x, w, (s, s), pad, **kw)
      ours = lambda x, w: conv.conv_general_dilated(x, w, (s, s), pad, **kw)
      rewrite = lambda x, w: cpu_conv.conv_nhwc_xla(x, w, (s, s), pad, (d, d), feature_group_count=groups)
      fns = {"xla": xla, "rewrite": rewrite, "jaxcnn": ours}
      if self.onednn is not None:
        fns["onednn"] = lambda x, w: self.onednn.conv(x, w, (s, s), pad, (d, d), groups)
      w_shape = (k, k, cin // groups, cout)
    key = self.jax.random.PRNGKey(0)
    x = self.jax.random.normal(key, (n, size, size, cin), jnp.float32)
    w = self.jax.random.normal(key, w_shape, jnp.float32) * 0.05
    return fns, x, w

  def prepare(self, name):
    jax = self.jax
    fns, x, w = self._conv_fns(_spec(name))
    dy = jax.random.normal(jax.random.PRNGKey(1), jax.eval_shape(fns["xla"], x, w).shape)
    for impl, f in fns.items():
      calls = {
          "fwd": (jax.jit(f), (x, w)),
          "dx": (jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0]), (x, w, dy)),
          "dw": (jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda w_: f(x, w_), w)[1](dy)[0]), (x, w, dy)),
      }
      for op, (fn, args) in calls.items():
        jax.block_until_ready(fn(*args))  # compile + warm up
        self.cache[(name, impl, op)] = (fn, args)

  def time(self, name, impl, op):
    fn, args = self.cache[(name, impl, op)]
    t = time.perf_counter()
    self.jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


class TorchWorker:
  """The same layers in PyTorch, channels_last, 2 threads."""

  def __init__(self):
    import torch
    torch.set_num_threads(2)
    self.torch, self.cache = torch, {}

  def prepare(self, name):
    torch = self.torch
    n, size, cin, cout, k, s, groups, transposed, d = _spec(name)
    cl = torch.channels_last
    x = torch.randn(n, cin, size, size).contiguous(memory_format=cl)
    if transposed:
      w = (torch.randn(cin, cout, k, k) * 0.05).contiguous(memory_format=cl)
      pad = (k - s) // 2  # 'SAME' for k=4, s=2
      fwd = lambda: torch.nn.functional.conv_transpose2d(x, w, stride=s, padding=pad)
    else:
      w = (torch.randn(cout, cin // groups, k, k) * 0.05).contiguous(memory_format=cl)
      pad = _padding(k, s, d)
      fwd = lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=pad, dilation=d, groups=groups)
    with torch.no_grad():
      dy = torch.randn_like(fwd()).contiguous(memory_format=cl)

    def backward(mask):
      return torch.ops.aten.convolution_backward(dy, x, w, None, [s, s], [pad, pad], [d, d], transposed,
                                                 [0, 0], groups, mask)
    ops = {"fwd": fwd, "dx": lambda: backward([True, False, False]),
           "dw": lambda: backward([False, True, False])}
    with torch.no_grad():
      for op, fn in ops.items():
        fn()
        self.cache[(name, "torch", op)] = fn

  def time(self, name, impl, op):
    fn = self.cache[(name, impl, op)]
    with self.torch.no_grad():
      t = time.perf_counter()
      fn()
      return time.perf_counter() - t


def worker_main(kind):
  worker = JaxWorker() if kind == "jax" else TorchWorker()
  for line in sys.stdin:
    request = json.loads(line)
    if request["cmd"] == "prepare":
      worker.prepare(request["layer"])
      reply = {"ok": True}
    else:
      key = (request["layer"], request["impl"], request["op"])
      reply = {"s": worker.time(*key)} if key in worker.cache else {"missing": True}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


class Client:
  def __init__(self, kind):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")]))
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--worker={kind}"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def ask(self, **request):
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker died on {request}")
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--layers", default=",".join(LAYERS))
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--impls", default="xla,rewrite,onednn,jaxcnn", help="JAX implementations to time")
  p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    worker_main(args.worker)
    return 0
  names = [n for n in args.layers.split(",") if n]
  unknown = [n for n in names if n not in LAYERS]
  if unknown:
    print(f"error: unknown layers {unknown}; known: {sorted(LAYERS)}", file=sys.stderr)
    return 2
  clients = {"jax": Client("jax")}
  impls = [("jax", impl) for impl in args.impls.split(",") if impl]
  if not args.no_torch:
    clients["torch"] = Client("torch")
    impls.append(("torch", "torch"))
  rows = []
  try:
    for name in names:
      for client in clients.values():
        client.ask(cmd="prepare", layer=name)
      layer_impls = [(kind, impl) for kind, impl in impls if impl != "onednn" or not LAYERS[name][7]]
      times = {(impl, op): [] for _, impl in layer_impls for op in OPS}
      for _ in range(args.rounds):
        for op in OPS:
          for kind, impl in layer_impls:
            reply = clients[kind].ask(cmd="time", layer=name, impl=impl, op=op)
            if "s" in reply:
              times[(impl, op)].append(reply["s"])
      times = {key: v for key, v in times.items() if v}
      med = {f"{impl}_{op}_ms": round(statistics.median(v) * 1e3, 2) for (impl, op), v in times.items()}
      row = {"layer": name, "shape": LAYERS[name], **med}
      print(json.dumps(row), flush=True)
      rows.append(row)
  finally:
    for client in clients.values():
      client.close()
  names = ("xla", "rewrite", "onednn", "jaxcnn", "torch")
  print(f"\n{'layer':22s} {'op':4s} " + " ".join(f"{n:>8s}" for n in names) + f" {'xla/jaxcnn':>10s} {'vs torch':>9s}")
  for row in rows:
    for op in OPS:
      ms = [row.get(f"{n}_{op}_ms", float("nan")) for n in names]
      print(f"{row['layer']:22s} {op:4s} " + " ".join(f"{v:8.2f}" for v in ms)
            + f" {ms[0] / ms[3]:10.2f} {ms[4] / ms[3]:9.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
