"""Video models (jaxcnn.models.video): shared per-frame encoder, heads, clip lengths, cached features."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.registry import create_model

ENCODER = dict(encoder_name="resnet_cifar", encoder_options={"depth": 8, "width": 0.25})
KEY = jax.random.PRNGKey(0)


def tiny(head, **kw):
  return create_model(f"cnn_{head}", hidden_size=8, num_classes=5, **ENCODER, **kw)


def clips(b=2, t=4, hw=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, hw, hw, 1)), jnp.float32)


def trained_like(variables, seed=1):
  """Random non-trivial BatchNorm statistics, so eval-mode BN is not the identity."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    return jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype)
  stats = jax.tree_util.tree_map_with_path(draw, variables["batch_stats"])
  return {**variables, "batch_stats": stats}


def test_registered_heads_and_shapes():
  x = clips()
  for head in ("lstm", "gru", "tam", "avg"):
    model = tiny(head)
    variables = jax.eval_shape(model.init, KEY, x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, 5), head
    expected = {"lstm": {"encoder", "rnn", "classifier"}, "gru": {"encoder", "rnn", "classifier"},
                "tam": {"encoder", "tam", "classifier"}, "avg": {"encoder", "classifier"}}[head]
    assert set(variables["params"]) == expected


def test_encoder_is_shared_and_applied_per_frame():
  model = tiny("avg")
  x = clips(b=2, t=3)
  variables = trained_like(model.init(KEY, x))
  features = model.apply(variables, x, method=type(model).encode)
  assert features.shape == (2, 3, 16)   # resnet_cifar width 0.25: 4/8/16 channels
  encoder = create_model("resnet_cifar", return_features=True, depth=8, width=0.25)
  enc_vars = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
  for b in range(2):
    for t in range(3):
      alone = encoder.apply(enc_vars, x[b, t][None])["stage3"].mean(axis=(1, 2))[0]
      np.testing.assert_allclose(features[b, t], alone, rtol=1e-5, atol=1e-5)
  # the temporal average head is exactly the classifier on the frames' mean feature
  dense = variables["params"]["classifier"]
  expected = features.mean(axis=1) @ dense["kernel"] + dense["bias"]
  np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head,bidirectional", [("lstm", True), ("gru", False), ("avg", False)])
def test_padded_frames_are_ignored_with_seq_lengths(head, bidirectional):
  model = tiny(head, bidirectional=bidirectional)
  x = clips(b=2, t=5)
  variables = trained_like(model.init(KEY, x))
  lengths = np.array([3, 5])
  garbage = clips(b=2, t=5, seed=7)
  padded = jnp.where((jnp.arange(5)[None, :] < lengths[:, None])[:, :, None, None, None], x, garbage)
  logits = model.apply(variables, padded, seq_lengths=lengths)
  short = model.apply(variables, x[:1, :3])        # clip 0 alone, its 3 frames
  np.testing.assert_allclose(logits[0], short[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[1], model.apply(variables, x[1:])[0], rtol=1e-5, atol=1e-5)
  if head != "avg":   # the order matters to a recurrent head
    assert not np.allclose(model.apply(variables, x[:, ::-1]), model.apply(variables, x), atol=1e-4)


def test_head_on_features_has_the_end_to_end_parameters():
  model = tiny("lstm", bidirectional=True)
  x = clips()
  variables = trained_like(model.init(KEY, x))
  features = model.apply(variables, x, method=type(model).encode)
  head = tiny("lstm", bidirectional=True, input="features")
  head_vars = {"params": {k: v for k, v in variables["params"].items() if k != "encoder"}}
  assert jax.tree.structure(head.init(KEY, features)["params"]) == jax.tree.structure(head_vars["params"])
  np.testing.assert_allclose(head.apply(head_vars, features), model.apply(variables, x), rtol=1e-5, atol=1e-5)
  assert head.input_field == "frame_features" and model.input_field == "image"


def test_bad_options_are_user_errors():
  x = clips()
  with pytest.raises(UserError, match="no return_features"):
    create_model("cnn_lstm", encoder_name="lenet5").init(KEY, x)
  with pytest.raises(UserError, match="video head"):
    create_model("cnn_lstm", head="transformer", **ENCODER).init(KEY, x)
  with pytest.raises(UserError, match=r"clips \[batch, frames"):
    tiny("avg").init(KEY, x[:, 0])
  with pytest.raises(UserError, match="no seq_lengths"):
    tiny("tam").init(KEY, x, seq_lengths=np.array([2, 4]))


def test_cached_features_give_the_end_to_end_logits(tmp_path):
  from experiments.configs import get_experiment
  from jaxcnn import data as data_lib
  from jaxcnn import video_features
  config, _ = get_experiment("cnn_lstm_moving_digits")
  with config.unlocked():
    config.model.encoder_options = {"depth": 8, "width": 0.25}
    config.model.hidden_size = 8
    config.data.train_split, config.data.eval_split = "train[:6]", "test[:5]"
    config.data.image_size = 16
    config.data.augment = ""
    config.data.num_threads = 0
    config.train.batch_size, config.eval.batch_size = 4, 4
  index = video_features.cache_features(config, str(tmp_path))
  assert index["splits"] == {"train": 6, "eval": 5} and index["feature_shape"] == [8, 16]
  task, variables = video_features.initial_variables(config)
  clips_ = np.concatenate([b["image"][b["mask"] > 0] for b in data_lib.eval_iterator(config.data, global_batch_size=4)])
  end_to_end = task.model.apply(variables, clips_)
  # the head-only run's data and model: the cache registered as a dataset, the model with input='features'
  head_cfg = video_features.head_config(config, str(tmp_path))
  from jaxcnn.tasks import get_task
  head_task = get_task(head_cfg, data_lib.dataset_info(head_cfg.data.name))
  batches = list(data_lib.eval_iterator(head_cfg.data, global_batch_size=4))
  features = np.concatenate([b["frame_features"][b["mask"] > 0] for b in batches])
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  head_vars = {"params": {k: v for k, v in variables["params"].items() if k != "encoder"}}
  np.testing.assert_allclose(head_task.model.apply(head_vars, features), end_to_end, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labels, data_lib.get_source("moving_digits", "test[:5]").labels)
  assert head_task.input_field == "frame_features"
  with pytest.raises(UserError, match="augmentation"):
    with config.unlocked():
      config.data.augment = "crop"
    video_features.head_config(config, str(tmp_path))


def test_ucf101_recipe_resolves():
  from experiments.configs import get_experiment
  from jaxcnn import data as data_lib
  from jaxcnn.tasks import base
  config, doc = get_experiment("cnn_lstm_ucf101")
  spec = data_lib.resolve(config.data)
  assert spec.name == "ucf101" and spec.frames == 16 and spec.image_shape == (16, 224, 224, 3)
  model = create_model(config.model.name, **base.model_kwargs(config.model, config.train, num_classes=101))
  x = jax.ShapeDtypeStruct((1,) + spec.image_shape, jnp.float32)
  params = jax.eval_shape(model.init, KEY, x)["params"]
  n_encoder = sum(a.size for a in jax.tree.leaves(params["encoder"]))
  assert n_encoder == 11_176_512   # torchvision resnet18 without its fc (11,689,512 - 513,000)
  out = jax.eval_shape(model.apply, {"params": params, "batch_stats": jax.eval_shape(model.init, KEY, x)["batch_stats"]}, x)
  assert out.shape == (1, 101)
  assert "Target" in doc and "68.2%" in doc
