"""Sequence recognition with CTC (Graves et al. 2006), as CRNN reads words: images -> character strings.

Batches carry `image` [B, H, W, C], `transcript` int32 [B, L] (alphabet indices 0..K-1, padded) and
`transcript_length` int32 [B] (`jaxcnn.data.ocr`). The model gives per-column logits [B, T, K + 1]:
class 0 is CTC's blank, class c + 1 the alphabet's character c (the CRNN reference code's layout), so the
CTC labels are transcript + 1 and `blank_id` = 0.

Training minimises optax's `ctc_loss` (the negative log-likelihood of the label summed over all
alignments), averaged over the batch (crnn.pytorch's CTC sum divided by the batch size).

Decoding: greedy (best path: the argmax class per column, repeats merged, blanks dropped), on the device
in `eval_step`; with `sequence.beam_width` > 1, CTC prefix beam search (Hannun et al. 2014) on the host
over the eval split's log-probabilities instead (`prefix_beam_search`; no language model).
Metrics: eval/sequence_accuracy (the share of examples decoded exactly), eval/char_error_rate (the
Levenshtein distance between decoded and true strings summed over the split, divided by the total true
length), eval/loss (mean CTC NLL); train/sequence_accuracy (greedy) in the logs.

Label lengths: CTC can emit a label of L characters with R repeated neighbours only if T >= L + R (a
blank must separate the repeats; T >= 2L - 1 in the worst case). When the task is built it checks every
label of the train and eval splits against the model's T for data.image_size (`ocr.ctc_frames`) and
refuses the first that does not fit, naming it.

Options (config section `sequence`): beam_width (0 or 1: greedy), previews (eval images drawn with
their predicted and true strings in plots/ at every eval; 0: none).
"""
import math
import os
from typing import Dict, List, Sequence as Seq, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.data import ocr
from jaxcnn.errors import UserError
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs

BLANK = 0


def sequence_defaults():
  import ml_collections
  return ml_collections.ConfigDict({"beam_width": 0, "previews": 16})


# --- decoding and scoring (pure functions, tested on their own) -------------------------------------------
def greedy_decode(logits):
  """Best-path decoding, fixed shapes: (classes int32 [B, T] left-aligned, -1 after, lengths int32 [B]).

  Classes are CTC classes (1..K; blanks removed, repeats merged)."""
  best = jnp.argmax(logits, -1).astype(jnp.int32)
  prev = jnp.pad(best, ((0, 0), (1, 0)), constant_values=BLANK)[:, :-1]
  keep = (best != BLANK) & (best != prev)
  steps = best.shape[1]
  slot = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, steps)   # dropped columns go to an extra slot
  rows = jnp.arange(best.shape[0])[:, None]
  out = jnp.full((best.shape[0], steps + 1), -1, jnp.int32).at[rows, slot].set(best)
  return out[:, :steps], jnp.sum(keep, axis=1).astype(jnp.int32)


def prefix_beam_search(log_probs: np.ndarray, beam_width: int) -> Tuple[Tuple[int, ...], float]:
  """CTC prefix beam search over one sequence's log-probabilities [T, K + 1] (blank = 0).

  Returns (the most probable labelling found, as CTC classes; its log-probability summed over the
  alignments the beam kept). Each prefix keeps two scores, ending in a blank or not, so that a repeated
  class extends the prefix only across a blank.
  """
  beams = {(): (0.0, -math.inf)}   # prefix -> (log P(ends in blank), log P(ends in a non-blank))
  for frame in np.asarray(log_probs, np.float64):
    nxt: Dict[tuple, List[float]] = {}

    def add(prefix, blank, non_blank):
      b, nb = nxt.get(prefix, (-math.inf, -math.inf))
      nxt[prefix] = (np.logaddexp(b, blank), np.logaddexp(nb, non_blank))

    for prefix, (b, nb) in beams.items():
      total = np.logaddexp(b, nb)
      add(prefix, total + frame[BLANK], -math.inf)
      last = prefix[-1] if prefix else None
      for c in range(1, len(frame)):
        p = frame[c]
        if c == last:
          add(prefix, -math.inf, nb + p)          # the repeat merges into the same character
          add(prefix + (c,), -math.inf, b + p)    # a new character after a blank
        else:
          add(prefix + (c,), -math.inf, total + p)
    beams = dict(sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_width])
  best, (b, nb) = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))
  return best, float(np.logaddexp(b, nb))


def edit_distance(a: Seq, b: Seq) -> int:
  """Levenshtein distance (insertions, deletions, substitutions of cost 1), one DP row at a time."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, start=1):
    diagonal, row[0] = row[0], i
    for j, y in enumerate(b, start=1):
      diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
  return row[-1]


def string_metrics(predicted: Seq[Seq[int]], truth: Seq[Seq[int]]) -> Dict[str, float]:
  """eval/sequence_accuracy and eval/char_error_rate of decoded vs true label sequences."""
  exact = sum(list(p) == list(t) for p, t in zip(predicted, truth))
  errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
  chars = sum(len(t) for t in truth)
  return {"eval/sequence_accuracy": exact / max(len(truth), 1), "eval/char_error_rate": errors / max(chars, 1)}


# --- the task ------------------------------------------------------------------------------------------------
class SequenceRecognition(Task):
  best_metric = ("eval/sequence_accuracy", "max")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    self.options = sequence_defaults()
    self.options.update(dict(config.get("sequence", {})))
    if int(self.options.beam_width) < 0 or int(self.options.previews) < 0:
      raise UserError(f"sequence.beam_width and sequence.previews must be >= 0, got {self.options.beam_width}, "
                      f"{self.options.previews}")
    self.alphabet = tuple(data_info.class_names)
    if len(self.alphabet) != data_info.num_classes:
      raise UserError(f"task 'sequence' needs a text dataset (its class names the alphabet): '{data_info.name}' "
                      f"is not one (text datasets: digit_strings, mjsynth, iiit5k, or register_word_images)")
    self.model = create_model(config.model.name, **model_kwargs(config.model, config.train, axis_name,
                                                                 num_classes=data_info.num_classes))
    from jaxcnn.data import config as data_config
    self.spec = data_config.resolve(config.data)
    self.frames = self._output_columns()
    self._check_label_lengths()
    self._preview = None
    self._apply_eval = jax.jit(lambda v, x: self.model.apply(v, x, train=False))

  def _output_columns(self) -> int:
    x = jax.ShapeDtypeStruct((1,) + tuple(self.spec.image_shape), jnp.float32)
    out = jax.eval_shape(lambda x: self.model.init_with_output(jax.random.PRNGKey(0), x)[0], x)
    if out.ndim != 3 or out.shape[-1] != len(self.alphabet) + 1:
      raise UserError(f"model '{self.config.model.name}' gives {out.shape}; task 'sequence' needs per-column "
                      f"logits [B, T, {len(self.alphabet) + 1}] (the alphabet and the blank)")
    return int(out.shape[1])

  def _check_label_lengths(self):
    for split in dict.fromkeys((self.spec.train_split, self.spec.eval_split)):
      source = self.spec.source(split)
      needed = ocr.ctc_frames(source)
      if needed is None:
        continue
      bad = np.flatnonzero(needed > self.frames)
      if len(bad):
        from jaxcnn.data import sources
        i = int(bad[0])
        raise UserError(f"{sources.describe_example(source, i)}: its label needs {int(needed[i])} CTC frames "
                        f"(length + repeated neighbours) but model '{self.config.model.name}' gives "
                        f"T={self.frames} columns at data.image_size={self.spec.image_size}; allowed: labels with "
                        f"length + repeats <= {self.frames} ({len(bad)} label(s) of split '{split}' do not fit; "
                        f"widen the images or shorten the labels)")

  def describe(self):
    return {**super().describe(), "alphabet": "".join(self.alphabet)}

  # --- training ------------------------------------------------------------------------------------------
  def init(self, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch["image"], train=False)

  @staticmethod
  def ctc_per_example(logits, batch):
    labels = batch[ocr.TRANSCRIPT]
    label_paddings = (jnp.arange(labels.shape[1])[None, :] >= batch[ocr.TRANSCRIPT_LENGTH][:, None])
    logits = logits.astype(jnp.float32)
    return optax.ctc_loss(logits, jnp.zeros(logits.shape[:2], jnp.float32), labels + 1,
                          label_paddings.astype(jnp.float32), blank_id=BLANK)

  @staticmethod
  def exact_matches(logits, batch):
    """[B] bool: greedy decoding equals the label."""
    decoded, lengths = greedy_decode(logits)
    labels, true_len = batch[ocr.TRANSCRIPT] + 1, batch[ocr.TRANSCRIPT_LENGTH]
    width = min(decoded.shape[1], labels.shape[1])
    slots = jnp.arange(width)[None, :] < true_len[:, None]
    same = jnp.all(jnp.where(slots, decoded[:, :width] == labels[:, :width], True), axis=1)
    return same & (lengths == true_len)

  def loss(self, params, model_state, batch, rng):
    logits, new_state = self.model.apply({"params": params, **model_state}, batch["image"], train=True,
                                         rngs={"dropout": rng}, mutable=list(model_state))
    loss = jnp.mean(self.ctc_per_example(logits, batch))
    accuracy = jnp.mean(self.exact_matches(logits, batch).astype(jnp.float32))
    return loss, (new_state, {"train/loss": loss, "train/sequence_accuracy": accuracy})

  # --- evaluation ----------------------------------------------------------------------------------------
  def eval_step(self, variables, batch):
    logits = self.model.apply(variables, batch["image"], train=False).astype(jnp.float32)
    mask = batch["mask"]
    decoded, lengths = greedy_decode(logits)
    out = {"loss": jnp.sum(self.ctc_per_example(logits, batch) * mask), "count": jnp.sum(mask),
           "per_example/decoded": decoded, "per_example/decoded_length": lengths,
           "per_example/transcript": batch[ocr.TRANSCRIPT], "per_example/transcript_length":
           batch[ocr.TRANSCRIPT_LENGTH], "per_example/mask": mask}
    if int(self.options.beam_width) > 1:
      out["per_example/log_probs"] = jax.nn.log_softmax(logits, -1)
    return out

  def eval_metrics(self, sums):
    return {"eval/loss": float(sums["loss"]) / max(float(sums["count"]), 1.0)}

  def predictions(self, outputs) -> List[Tuple[int, ...]]:
    """Decoded alphabet indices per example (greedy, or beam search with beam_width > 1)."""
    if int(self.options.beam_width) > 1:
      return [tuple(c - 1 for c in prefix_beam_search(lp, int(self.options.beam_width))[0])
              for lp in outputs["log_probs"]]
    return [tuple(int(c) - 1 for c in d[:n]) for d, n in zip(outputs["decoded"], outputs["decoded_length"])]

  def host_eval(self, outputs):
    truth = [tuple(int(c) for c in t[:n]) for t, n in zip(outputs["transcript"], outputs["transcript_length"])]
    return string_metrics(self.predictions(outputs), truth)

  # --- pictures ------------------------------------------------------------------------------------------
  def on_eval(self, variables, step, workdir):
    n = int(self.options.previews)
    if n <= 0:
      return {}
    if self._preview is None:
      from jaxcnn import data as data_lib
      batch = next(iter(data_lib.eval_iterator(self.config.data, global_batch_size=n, process_index=0,
                                               process_count=1)))
      keep = np.asarray(batch["mask"]) > 0
      self._preview = {k: np.asarray(v)[keep] for k, v in batch.items()}
    batch = self._preview
    decoded, lengths = jax.device_get(greedy_decode(self._apply_eval(variables, batch["image"])))
    if jax.process_index() == 0:
      predicted = ["".join(self.alphabet[c - 1] for c in d[:k]) for d, k in zip(decoded, lengths)]
      truth = [ocr.decode(t, k, self.alphabet) for t, k in zip(batch[ocr.TRANSCRIPT], batch[ocr.TRANSCRIPT_LENGTH])]
      save_strips(os.path.join(workdir, "plots", f"sequence_step{step:07d}.png"), batch["image"], predicted, truth)
    return {}


def save_strips(path: str, images, predicted, truth) -> str:
  """Word images one per row, each titled 'predicted / true' (green when equal, red otherwise)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  images = np.asarray(images, np.float32)
  h, w = images.shape[1:3]
  fig, axes = plt.subplots(len(images), 1, figsize=(max(3.0, 3.0 * w / h / 2), 0.9 * len(images)), squeeze=False)
  for ax, image, p, t in zip(axes[:, 0], images, predicted, truth):
    lo, hi = float(image.min()), float(image.max())
    ax.imshow((image - lo) / max(hi - lo, 1e-6) if image.shape[-1] == 3 else image[..., 0], cmap="gray")
    ax.set_title(f"{p or '(empty)'} / {t}", fontsize=8, color="green" if p == t else "red")
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
