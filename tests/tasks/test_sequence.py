"""Task 'sequence': CTC decoding (greedy, beam search vs brute force), edit distance, one training step."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import crnn_digits
from jaxcnn.errors import UserError
from jaxcnn.tasks import get_task
from jaxcnn.tasks.sequence import edit_distance, greedy_decode, prefix_beam_search, string_metrics
from jaxcnn.data import dataset_info


def test_greedy_decode_merges_repeats_and_drops_blanks():
  # best paths: [1 1 0 1 2 2 0], [0 0 0 0 0 0 0], [3 0 3 3 0 0 1]
  paths = np.array([[1, 1, 0, 1, 2, 2, 0], [0] * 7, [3, 0, 3, 3, 0, 0, 1]])
  logits = jax.nn.one_hot(paths, 4) * 5.0
  decoded, lengths = greedy_decode(logits)
  assert lengths.tolist() == [3, 0, 3]
  assert decoded.tolist() == [[1, 1, 2, -1, -1, -1, -1], [-1] * 7, [3, 3, 1, -1, -1, -1, -1]]


def labelling_log_prob(log_probs, labelling):
  """log P(labelling | x) by optax's CTC (sum over alignments)."""
  if not labelling:
    return float(jnp.sum(log_probs[:, 0]))
  labels = jnp.asarray([labelling], jnp.int32)
  return -float(optax.ctc_loss(log_probs[None], jnp.zeros((1, log_probs.shape[0])), labels,
                               jnp.zeros((1, len(labelling))))[0])


def collapse(path):
  return tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c))


def test_beam_search_equals_brute_force_and_beats_greedy():
  rng = np.random.RandomState(0)
  for trial in range(6):
    steps, classes = 5, 3
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(rng.randn(steps, classes) * 1.5), -1))
    # Brute force: every alignment, summed per collapsed labelling.
    totals = {}
    for path in itertools.product(range(classes), repeat=steps):
      lp = sum(log_probs[t, c] for t, c in enumerate(path))
      key = collapse(path)
      totals[key] = np.logaddexp(totals.get(key, -math.inf), lp)
    best = max(totals, key=totals.get)
    found, score = prefix_beam_search(log_probs, beam_width=100)   # wide enough to be exact here
    assert found == best
    np.testing.assert_allclose(score, totals[best], rtol=1e-6)
    np.testing.assert_allclose(labelling_log_prob(jnp.asarray(log_probs), best), totals[best], rtol=1e-4)
    # A narrow beam still finds a labelling at least as likely as the greedy one.
    decoded, n = greedy_decode(jnp.asarray(log_probs)[None])
    greedy = tuple(int(c) for c in decoded[0, :int(n[0])])
    narrow, _ = prefix_beam_search(log_probs, beam_width=3)
    assert totals[narrow] >= totals[greedy] - 1e-9


def test_edit_distance_known_cases():
  assert edit_distance("kitten", "sitting") == 3
  assert edit_distance("flaw", "lawn") == 2
  assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
  assert edit_distance("same", "same") == 0
  assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
  m = string_metrics([(1, 2), (3,), ()], [(1, 2), (3, 3), (4, 5)])
  assert m["eval/sequence_accuracy"] == pytest.approx(1 / 3)
  assert m["eval/char_error_rate"] == pytest.approx((0 + 1 + 2) / 6)


def tiny_config(**data):
  c = crnn_digits.get_config()
  c.model.widths = (4, 4, 4, 4, 4, 4, 4)
  c.model.hidden_size = 8
  c.data.update(data)
  return c


@pytest.mark.slow
def test_task_step_and_eval_on_digit_strings():
  c = tiny_config()
  task = get_task(c, dataset_info("digit_strings"))
  assert task.frames == 33   # 128 // 4 + 1
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(4, 32, 128, 1), jnp.float32),
           "transcript": jnp.asarray([[1, 2, 3, 0], [4, 4, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]], jnp.int32),
           "transcript_length": jnp.asarray([3, 2, 4, 1], jnp.int32), "mask": jnp.ones(4)}
  variables = task.init(jax.random.PRNGKey(0), batch)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  (loss, (_, metrics)), grads = jax.value_and_grad(task.loss, has_aux=True)(params, state, batch,
                                                                             jax.random.PRNGKey(1))
  assert np.isfinite(loss) and loss > 0 and 0 <= metrics["train/sequence_accuracy"] <= 1
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  out = task.eval_step(variables, batch)
  assert np.isfinite(float(out["loss"])) and float(out["count"]) == 4
  metrics = task.host_eval({k[len("per_example/"):]: np.asarray(v) for k, v in out.items()
                            if k.startswith("per_example/")})
  assert set(metrics) == {"eval/sequence_accuracy", "eval/char_error_rate"}


def test_labels_the_model_cannot_emit_are_refused():
  # 32x24 images give T = 7 columns: an 8-digit string (or a 5-digit one with repeats) cannot be emitted.
  with pytest.raises(UserError, match=r"needs \d+ CTC frames .* T=7 .*length \+ repeats <= 7"):
    get_task(tiny_config(image_size=(32, 24)), dataset_info("digit_strings"))
