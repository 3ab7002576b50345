"""data.sampler='balanced': every class equally often per epoch, rare classes cycled through, and the pipeline's
determinism contract kept (the same global batches for 1 and 2 processes, exact resume)."""
import collections

import numpy as np
import pytest

from jaxcnn.data import default_data_config, train_iterator
from jaxcnn.data.pipeline import _BalancedEpochs
from jaxcnn.errors import UserError


def test_each_class_equally_often_and_rare_examples_cycled():
  labels = np.array([0] * 90 + [1] * 7 + [2] * 3)   # 100 examples, very imbalanced
  sampler = _BalancedEpochs(seed=3, labels=labels)
  for epoch in range(3):
    order = sampler(epoch)
    counts = collections.Counter(labels[order])
    assert len(order) == 100 and sorted(counts.values()) == [33, 33, 34]
    # class 2 (examples 97, 98, 99) shown 33 or 34 times: each example 11 or 12 times
    rare = collections.Counter(int(i) for i in order if labels[i] == 2)
    assert set(rare) == {97, 98, 99} and max(rare.values()) - min(rare.values()) <= 1
  np.testing.assert_array_equal(sampler(1), _BalancedEpochs(seed=3, labels=labels)(1))
  assert not np.array_equal(sampler(1), _BalancedEpochs(seed=4, labels=labels)(1))


def _config(**kw):
  c = default_data_config()
  c.update({**dict(name="digits", image_size=8, sampler="balanced", num_threads=0), **kw})
  return c


def _batches(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_pipeline_contract_holds_with_the_balanced_sampler():
  one = _batches(train_iterator(_config(augment="crop"), global_batch_size=32, seed=1), 50)
  halves = [_batches(train_iterator(_config(augment="crop"), global_batch_size=32, seed=1, process_index=p,
                                    process_count=2), 50) for p in range(2)]
  for t in range(50):
    for key in ("image", "label"):
      np.testing.assert_array_equal(one[t][key], np.concatenate([halves[0][t][key], halves[1][t][key]]))
  labels = np.concatenate([b["label"] for b in one])[:1437]  # digits' training split: 1,437 examples, 10 classes
  assert set(collections.Counter(labels).values()) <= {143, 144}
  it = train_iterator(_config(), global_batch_size=32, seed=1)
  _batches(it, 7)
  state = it.get_state()
  want = _batches(it, 3)
  resumed = train_iterator(_config(), global_batch_size=32, seed=1)
  resumed.set_state(state)
  for a, b in zip(want, _batches(resumed, 3)):
    np.testing.assert_array_equal(a["label"], b["label"])


def test_bad_sampler_names_and_datasets_without_labels_are_refused():
  with pytest.raises(UserError, match="data.sampler must be one of shuffle, balanced"):
    train_iterator(_config(sampler="weighted"), global_batch_size=8, seed=0)
  with pytest.raises(UserError, match="needs a dataset with class labels"):
    train_iterator(_config(name="digits_seg"), global_batch_size=8, seed=0)
