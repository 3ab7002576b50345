"""Retrieval recall@k against a direct per-query count, ties against the right answer, blocks."""
import numpy as np

from jaxcnn.eval import retrieval


def brute_force(image, text, valid, ks):
  n, k_slots, _ = text.shape
  caps = [(i, text[i, j]) for i in range(n) for j in range(k_slots) if valid[i, j]]
  out = {}
  for k in ks:
    hits = 0
    for i in range(n):
      scores = np.array([image[i] @ t for _, t in caps])
      own = np.array([o == i for o, _ in caps])
      best = scores[own].max()
      hits += np.sum((scores >= best) & ~own) < k
    out[f"i2t_recall@{k}"] = hits / n
    hits = 0
    for o, t in caps:
      scores = image @ t
      hits += np.sum(np.delete(scores, o) >= scores[o]) < k
    out[f"t2i_recall@{k}"] = hits / len(caps)
  return out


def test_recall_matches_brute_force_in_blocks(monkeypatch):
  rng = np.random.default_rng(0)
  n, k_slots, d = 23, 3, 5
  image = rng.normal(size=(n, d))
  text = image[:, None, :] + rng.normal(size=(n, k_slots, d)) * 1.5
  valid = rng.random((n, k_slots)) < 0.7
  valid[:, 0] = True
  monkeypatch.setattr(retrieval, "BLOCK", 4)
  got = retrieval.recall_at_k(image, text, valid, (1, 2, 5))
  want = brute_force(image, text, valid, (1, 2, 5))
  assert got.keys() == want.keys()
  for key in got:
    np.testing.assert_allclose(got[key], want[key], err_msg=key)
  assert 0 < got["t2i_recall@1"] < got["t2i_recall@5"] <= 1


def test_perfect_and_collapsed_embeddings():
  eye = np.eye(6)
  assert set(retrieval.recall_at_k(eye, eye[:, None, :], np.ones((6, 1), bool), (1,)).values()) == {1.0}
  same = np.ones((6, 4))   # every score ties: the right answer never wins a tie
  assert set(retrieval.recall_at_k(same, same[:, None, :], np.ones((6, 1), bool), (1, 5)).values()) == {0.0}
