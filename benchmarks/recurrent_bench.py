"""Recurrent layers and CRNN against PyTorch, timed in turns inside one process.

    python benchmarks/recurrent_bench.py lstm [--batch=64 --steps=100 --hidden=256 --layers=2 --rounds=7]
    python benchmarks/recurrent_bench.py crnn [--model=crnn --batch=64 --width=100 --rounds=7]

lstm: a bidirectional LSTM stack (`jaxcnn.layers.LSTM`, batch first) against `torch.nn.LSTM(batch_first=
True, bidirectional=True)` with the same weights (`jaxcnn.convert.recurrent`), input [batch, steps,
hidden]: forward and backward (gradients of sum(output * w) with respect to the input and every weight).
crnn: one training step of the task `sequence` (CRNN, CTC loss, Adam) against a PyTorch twin of the
same network (crnn.pytorch's layout: `jaxcnn.models.crnn`'s convolutions, BN after conv5 and conv6,
torch.nn.LSTM, Linear; `nn.CTCLoss(reduction='sum') / batch`, Adam) on random grey 32 x width images
with random 3-10 character labels of the 36-character alphabet.

Both frameworks use 2 threads (torch.set_num_threads(2); XLA on the same CPU). Each round times one call
of each side (JAX first, then torch, alternating order every round), so both see the same load; prints
the median seconds per call of each, their ratio (torch / jax: > 1 means JAX is faster) and the CPU
seconds per call (process time, both threads) as JSON. A benchmark-only script: torch is not a
dependency of jaxcnn.
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch


def timed_pair(jax_fn, torch_fn, rounds):
  jax_fn(), torch_fn()   # compile / warm up
  jax_fn(), torch_fn()
  times = {"jax": [], "torch": []}
  cpu = {"jax": [], "torch": []}
  for r in range(rounds):
    order = (("jax", jax_fn), ("torch", torch_fn)) if r % 2 == 0 else (("torch", torch_fn), ("jax", jax_fn))
    for name, fn in order:
      c0, t0 = time.process_time(), time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  ratios = [t / j for t, j in zip(times["torch"], times["jax"])]
  return {"jax_s": statistics.median(times["jax"]), "torch_s": statistics.median(times["torch"]),
          "torch_over_jax": statistics.median(ratios), "jax_cpu_s": statistics.median(cpu["jax"]),
          "torch_cpu_s": statistics.median(cpu["torch"]), "rounds": rounds}


def bench_lstm(args):
  from jaxcnn.convert.recurrent import torch_module_to_flax
  from jaxcnn.layers import LSTM
  torch.manual_seed(0)
  ref = torch.nn.LSTM(args.hidden, args.hidden, num_layers=args.layers, bidirectional=True, batch_first=True)
  layer = LSTM(args.hidden, num_layers=args.layers, bidirectional=True, unroll=args.unroll)
  params = jax.tree.map(jnp.asarray, torch_module_to_flax(ref))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, args.steps, args.hidden)).astype(np.float32)
  w = rng.normal(size=(args.batch, args.steps, 2 * args.hidden)).astype(np.float32)
  xj, wj = jnp.asarray(x), jnp.asarray(w)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply({"params": p}, x)[0] * wj), argnums=(0, 1)))
  xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w)

  def jax_fn():
    jax.block_until_ready(grad(params, xj))

  def torch_fn():
    ref.zero_grad(set_to_none=True)
    xt.grad = None
    (ref(xt)[0] * wt).sum().backward()

  out = timed_pair(jax_fn, torch_fn, args.rounds)
  return {"bench": "lstm", "batch": args.batch, "steps": args.steps, "hidden": args.hidden, "layers": args.layers,
          "unroll": args.unroll, **out}


class TorchCRNN(torch.nn.Module):
  """crnn.pytorch's CRNN with `jaxcnn.models.crnn`'s choices (BN after conv5 and conv6, as the paper)."""

  def __init__(self, num_classes, widths=(64, 128, 256, 256, 512, 512, 512), hidden=256):
    super().__init__()
    layers, cin = [], 1
    for i, width in enumerate(widths, start=1):
      k, p = (2, 0) if i == 7 else (3, 1)
      layers += [torch.nn.Conv2d(cin, width, k, 1, p)]
      if i in (5, 6):
        layers += [torch.nn.BatchNorm2d(width)]
      layers += [torch.nn.ReLU(True)]
      if i in (1, 2):
        layers += [torch.nn.MaxPool2d(2, 2)]
      elif i in (4, 6):
        layers += [torch.nn.MaxPool2d((2, 2), (2, 1), (0, 1))]
      cin = width
    self.cnn = torch.nn.Sequential(*layers)
    self.lstm1 = torch.nn.LSTM(cin, hidden, bidirectional=True)
    self.embed1 = torch.nn.Linear(2 * hidden, hidden)
    self.lstm2 = torch.nn.LSTM(hidden, hidden, bidirectional=True)
    self.classifier = torch.nn.Linear(2 * hidden, num_classes + 1)

  def forward(self, x):
    x = self.cnn(x).squeeze(2).permute(2, 0, 1)   # [T, B, C]
    x = self.embed1(self.lstm1(x)[0])
    return self.classifier(self.lstm2(x)[0])      # [T, B, K + 1]


def bench_crnn(args):
  import ml_collections
  import optax
  from jaxcnn.tasks.base import TrainState
  from jaxcnn.tasks.sequence import SequenceRecognition
  from jaxcnn.models.crnn import output_length
  alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 11, size=args.batch)
  labels = np.zeros((args.batch, 10), np.int32)
  for i, n in enumerate(lengths):
    labels[i, :n] = rng.integers(0, len(alphabet), size=n)
  images = rng.normal(size=(args.batch, 32, args.width, 1)).astype(np.float32)

  # JAX: the task's own train step (as the trainer runs it), Adam.
  task = SequenceRecognition.__new__(SequenceRecognition)
  config = ml_collections.ConfigDict({"model": {"name": args.model}, "train": {"grad_accum_steps": 1,
                                                                              "ema_decay": 0.0}})
  from jaxcnn.tasks.base import Task
  Task.__init__(task, config)
  from jaxcnn.registry import create_model
  task.model = create_model(args.model, num_classes=len(alphabet))
  batch = {"image": jnp.asarray(images), "transcript": jnp.asarray(labels),
           "transcript_length": jnp.asarray(lengths, jnp.int32)}
  variables = dict(task.init(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  tx = optax.adam(1e-3)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                     opt_state=tx.init(params), ema_params={}, rng=jax.random.PRNGKey(1))
  step = jax.jit(lambda s, b: task.train_step(s, b, tx), donate_argnums=0)
  holder = [state]

  def jax_fn():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics["train/loss"])

  # PyTorch twin.
  torch.manual_seed(0)
  model = TorchCRNN(len(alphabet)).train()
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  ctc = torch.nn.CTCLoss(blank=0, reduction="sum")
  xt = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
  targets = torch.tensor(labels + 1, dtype=torch.long)
  target_lengths = torch.tensor(lengths, dtype=torch.long)
  input_lengths = torch.full((args.batch,), output_length(args.width), dtype=torch.long)

  def torch_fn():
    opt.zero_grad(set_to_none=True)
    log_probs = model(xt).log_softmax(-1)
    loss = ctc(log_probs, targets, input_lengths, target_lengths) / args.batch
    loss.backward()
    opt.step()

  out = timed_pair(jax_fn, torch_fn, args.rounds)
  return {"bench": "crnn", "model": args.model, "batch": args.batch, "width": args.width, **out}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("what", choices=("lstm", "crnn"))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--unroll", type=int, default=1)
  p.add_argument("--model", default="crnn")
  p.add_argument("--width", type=int, default=100)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--threads", type=int, default=2)
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)
  result = bench_lstm(args) if args.what == "lstm" else bench_crnn(args)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
