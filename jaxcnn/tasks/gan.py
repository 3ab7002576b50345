"""GAN training as trainer plug-ins: GAN / CGAN / DCGAN (`GAN`) and the two StackGAN stages (`StackGAN`).

The train state holds both networks side by side: `params` and `opt_state` are
`{'generator': ..., 'discriminator': ...}` (BatchNorm statistics likewise under
`model_state['batch_stats']`), and `optimizer()` returns one optimizer per key,
so Orbax checkpoints carry both networks and both optimizer states and resume
is exact. One jitted, sharded `train_step` makes the two alternating updates:

  1. discriminator: fake = G(z) (no gradient to G), loss on real and fake,
     update `params['discriminator']` and its optimizer state only;
  2. generator: the same z through G and the *updated* D, update
     `params['generator']` and its optimizer state only.

Each sub-step goes through `Task.accumulated_grads` (gradient accumulation, pmap
averaging) and `Task.apply_gradients(key=...)`. BatchNorm statistics follow the
same rule: a sub-step keeps only its own network's new statistics (G's forward
pass in the D step and D's in the G step leave theirs untouched).

With `train.ema_decay` > 0 the EMA (of both networks; eval and samples use
it) is updated by `apply_gradients` after each sub-step, i.e. twice per step:
the effective per-step decay is ema_decay^2.

Losses (`gan.loss`), with D's logit l = D(x):
  non_saturating  D: softplus(-l_real) + softplus(l_fake)   G: softplus(-l_fake)   (Goodfellow et al., the default)
  minimax         D: as above                                G: -softplus(l_fake)   (the saturating original)
  hinge           D: relu(1 - l_real) + relu(1 + l_fake)     G: -l_fake             (Lim & Ye; Miyato et al.)
  least_squares   D: (l_real - 1)^2/2 + l_fake^2/2           G: (l_fake - 1)^2/2    (Mao et al., a=0, b=c=1)
The discriminator's learning rate is `optim.lr * gan.d_lr_mult` (one schedule
for both; the multiplier is an `optax.scale` after D's optimizer).

Evaluation: `eval_step` reports D's mean probability on held-out real images
(`eval/d_real`); after every eval, `on_eval` draws `gan.fid_samples` images and
reports `eval/fid` against the held-out split, `eval/inception_score`,
`eval/fid_extractor` (which classifier gave the features, see
`jaxcnn.eval.extractor`) and, for conditional models, `eval/cond_accuracy`:
the fraction of samples that classifier assigns to the class asked for. The
classifier looks at images of at most 32x32 (it resizes larger ones itself), so
for larger images it is trained on the 32x32 version of the data: the training
split of a 256x256 dataset never has to be held in memory, and the two StackGAN
stages of one dataset share one extractor (their scores are comparable). It
also writes `plots/samples_step<N>.png` from fixed latent vectors (one class per
row when conditional).

StackGAN (Zhang et al. 2017) adds, per stage:
  * the condition is an embedding per image: `batch['embedding']` from the data
    (CUB char-CNN-RNN text embeddings, [B, 1024] or [B, captions, 1024]: one
    caption is drawn per image and step), or, with `stackgan.embedding='label'`,
    a fixed random vector per class (offline digits);
  * matching-aware discriminator: real images with mismatched embeddings (the
    global batch's embeddings rolled by one, on the pmap path too; pairs of the
    same class are left out)
    count as fake: L_D = L_real + (L_fake + L_wrong) / 2, and with an
    unconditional logit (Stage II, `stackgan.uncond_coeff` = c > 0)
    (L_real + c L_ureal) / (1 + c) + (L_fake + L_wrong + c L_ufake) / (2 + c),
    the authors' PyTorch formula at c = 1;
  * the generator loss adds `stackgan.kl_coeff` x the Conditioning Augmentation
    KL (mean over batch and condition dimensions, as the authors' code, coeff 2);
  * Stage II takes its input from a trained Stage-I generator, read from the
    newest checkpoint in `stackgan.stage1_workdir` and kept frozen (evaluated
    with its BatchNorm running statistics) in `model_state['stage1']`, so a
    Stage-II checkpoint is complete on its own.
"""
import copy
import json
import logging
import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcnn.errors import UserError, unknown
from jaxcnn.models.vae import gaussian_kl
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs

log = logging.getLogger("jaxcnn")

LOSSES = ("non_saturating", "minimax", "hinge", "least_squares")
EXTRACTOR_MAX_SIZE = 32   # the extractor's own input size (jaxcnn.eval.extractor.LeNetFeatures)
NETS = ("generator", "discriminator")


def gan_defaults() -> ml_collections.ConfigDict:
  """The `gan` config section with its defaults."""
  return ml_collections.ConfigDict({
      "loss": "non_saturating",    # non_saturating | minimax | hinge | least_squares
      "conditional": False,        # condition G and D on the class label (CGAN)
      "d_lr_mult": 1.0,            # discriminator lr = optim.lr * d_lr_mult
      "fid_samples": 1000,         # generated images per eval for FID / IS / cond accuracy (0: none)
      "grid_size": 10,             # the sample grid is grid_size x grid_size
  })


def stackgan_defaults() -> ml_collections.ConfigDict:
  """The `stackgan` config section with its defaults."""
  return ml_collections.ConfigDict({
      "embedding": "label",        # label: a fixed random vector per class | data: batch['embedding']
      "embed_dim": 1024,           # label embeddings: their size (the char-CNN-RNN embeddings' 1024)
      "embed_seed": 0,
      "kl_coeff": 2.0,             # Conditioning Augmentation KL weight (the authors' 2.0)
      "uncond_coeff": 0.0,         # weight of the unconditional logit (Stage II of the authors' code: 1.0)
      "stage1_workdir": "",        # Stage II: the workdir of a finished Stage-I run
  })


def _merged(defaults, section):
  out = defaults
  if section is not None:
    out.update(dict(section))
  return out


# ------------------------------------------------------------------------------ losses

def discriminator_terms(kind: str, real_logits, fake_logits):
  """Per-example D losses for real and for fake inputs."""
  if kind in ("non_saturating", "minimax"):
    return jax.nn.softplus(-real_logits), jax.nn.softplus(fake_logits)
  if kind == "hinge":
    return jax.nn.relu(1.0 - real_logits), jax.nn.relu(1.0 + fake_logits)
  if kind == "least_squares":
    return 0.5 * jnp.square(real_logits - 1.0), 0.5 * jnp.square(fake_logits)
  raise unknown("gan.loss", kind, LOSSES)


def generator_term(kind: str, fake_logits):
  """Per-example G loss on D's logits for generated images."""
  if kind == "non_saturating":
    return jax.nn.softplus(-fake_logits)
  if kind == "minimax":
    return -jax.nn.softplus(fake_logits)
  if kind == "hinge":
    return -fake_logits
  if kind == "least_squares":
    return 0.5 * jnp.square(fake_logits - 1.0)
  raise unknown("gan.loss", kind, LOSSES)


# ------------------------------------------------------------------------------ GAN / CGAN / DCGAN

class GAN(Task):
  best_metric = ("eval/fid", "min")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    self.gan = _merged(gan_defaults(), config.get("gan"))
    if self.gan.loss not in LOSSES:
      raise unknown("gan.loss", self.gan.loss, LOSSES)
    if float(self.gan.d_lr_mult) <= 0:
      raise UserError(f"gan.d_lr_mult must be > 0, got {self.gan.d_lr_mult}")
    self.num_classes = int(data_info.num_classes)
    self.image_size = int(config.data.image_size) or data_info.image_shape[0]
    self.channels = int(config.data.channels) or data_info.image_shape[2]
    self.model = self.make_model(config, axis_name)
    self._fns: Dict[str, Any] = {}
    self._real_features = None

  def make_model(self, config, axis_name):
    extra = dict(image_size=self.image_size, channels=self.channels,
                 num_classes=self.num_classes if self.gan.conditional else 0)
    return create_model(config.model.name, **model_kwargs(config.model, config.train, axis_name, **extra))

  @property
  def conditional(self) -> bool:
    return bool(self.gan.conditional)

  def optimizer(self, make_tx):
    d_tx = make_tx(self.config.optim)
    if float(self.gan.d_lr_mult) != 1.0:
      d_tx = optax.chain(d_tx, optax.scale(float(self.gan.d_lr_mult)))
    return {"generator": make_tx(self.config.optim), "discriminator": d_tx}

  def init(self, rng, batch):
    n = batch["image"].shape[0]
    labels = batch["label"] if self.conditional else None
    return self.model.init(rng, jnp.zeros((n, self.model.latent_dim)), labels, train=False)

  # --- the networks, as functions of (params, model_state) ----------------------
  def _vars(self, params, model_state):
    v = {"params": params}
    if "batch_stats" in model_state:
      v["batch_stats"] = model_state["batch_stats"]
    return v

  def _apply(self, params, model_state, method, *args, train):
    """Runs one pair method; returns (output, model_state with the updated batch_stats)."""
    out, updates = self.model.apply(self._vars(params, model_state), *args, train=train, method=method,
                                    mutable=["batch_stats"])
    return out, {**model_state, **updates}

  def prepare(self, batch, rng, train: bool):
    """Adds what G and D need besides the images (StackGAN: the embeddings)."""
    del rng, train
    return batch

  def latents(self, rng, n):
    return jax.random.normal(rng, (n, self.model.latent_dim), jnp.float32)

  def generate(self, params, model_state, batch, rng, train: bool):
    """(fake images, extra generator loss terms, model_state) for the batch's z (and labels)."""
    del rng
    labels = batch["label"] if self.conditional else None
    fake, model_state = self._apply(params, model_state, "generate", batch["z"], labels, train=train)
    return fake, {}, model_state

  def discriminate(self, params, model_state, images, batch, train: bool):
    """(logits [B], model_state) of D on `images` conditioned as the batch is."""
    labels = batch["label"] if self.conditional else None
    return self._apply(params, model_state, "discriminate", images, labels, train=train)

  # --- losses of the two sub-steps --------------------------------------------
  def discriminator_loss(self, params, model_state, batch, fake):
    real_logits, model_state = self.discriminate(params, model_state, batch["image"], batch, True)
    fake_logits, model_state = self.discriminate(params, model_state, fake, batch, True)
    real_term, fake_term = discriminator_terms(self.gan.loss, real_logits, fake_logits)
    loss = jnp.mean(real_term + fake_term)
    metrics = {"train/d_loss": loss, "train/d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
               "train/d_fake": jnp.mean(jax.nn.sigmoid(fake_logits))}
    return loss, model_state, metrics

  def generator_loss(self, params, model_state, batch, fake, extra):
    logits, _ = self.discriminate(params, model_state, fake, batch, True)
    loss = jnp.mean(generator_term(self.gan.loss, logits))
    return loss, {"train/g_loss": loss}

  def loss(self, params, model_state, batch, rng):
    """Both players' losses at the current parameters (for reporting; training uses the sub-steps)."""
    fake, extra, _ = self.generate(params, model_state, batch, rng, True)
    d_loss, _, d_metrics = self.discriminator_loss(params, model_state, batch, jax.lax.stop_gradient(fake))
    g_loss, g_metrics = self.generator_loss(params, model_state, batch, fake, extra)
    return d_loss + g_loss, (model_state, {**d_metrics, **g_metrics})

  # --- the alternating step ------------------------------------------------------
  def discriminator_step(self, state, batch, tx, rng):
    """Updates D (params, optimizer state, BN statistics) only."""
    def loss_fn(d_params, model_state, mb, r):
      params = {**state.params, "discriminator": d_params}
      fake, _, _ = self.generate(params, model_state, mb, r, True)  # G's new BN statistics are dropped
      loss, model_state, metrics = self.discriminator_loss(params, model_state, mb, jax.lax.stop_gradient(fake))
      return loss, (model_state, metrics)
    grads, model_state, metrics = self.accumulated_grads(state.params["discriminator"], state.model_state,
                                                         batch, rng, loss_fn=loss_fn)
    model_state = _keep_own_stats(state.model_state, model_state, "discriminator")
    state = self.apply_gradients(state, grads, tx["discriminator"], model_state=model_state, key="discriminator")
    metrics["train/d_grad_norm"] = metrics.pop("train/grad_norm")
    return state, metrics

  def generator_step(self, state, batch, tx, rng):
    """Updates G (params, optimizer state, BN statistics) only, against the current D."""
    def loss_fn(g_params, model_state, mb, r):
      params = {**state.params, "generator": g_params}
      fake, extra, new_state = self.generate(params, model_state, mb, r, True)
      loss, metrics = self.generator_loss(params, model_state, mb, fake, extra)
      return loss, (new_state, metrics)
    grads, model_state, metrics = self.accumulated_grads(state.params["generator"], state.model_state,
                                                         batch, rng, loss_fn=loss_fn)
    model_state = _keep_own_stats(state.model_state, model_state, "generator")
    state = self.apply_gradients(state, grads, tx["generator"], model_state=model_state, key="generator")
    metrics["train/g_grad_norm"] = metrics.pop("train/grad_norm")
    return state, metrics

  def batch_latents(self, rng, n):
    """z for a batch of n. On the pmap path each device takes its slice of the global batch's z, so the run
    sees the same latents as under jit; its other per-example noise is drawn per device from a key folded with
    the device index."""
    if not self.axis_name:
      return self.latents(rng, n)
    devices, index = jax.lax.axis_size(self.axis_name), jax.lax.axis_index(self.axis_name)
    return jax.lax.dynamic_slice_in_dim(self.latents(rng, n * devices), index * n, n)

  def train_step(self, state, batch, tx):
    rng = jax.random.fold_in(state.rng, state.step)
    z_rng, prep_rng, d_rng, g_rng = jax.random.split(rng, 4)
    if self.axis_name:
      index = jax.lax.axis_index(self.axis_name)
      prep_rng, d_rng, g_rng = (jax.random.fold_in(k, index) for k in (prep_rng, d_rng, g_rng))
    batch = self.prepare(dict(batch, z=self.batch_latents(z_rng, batch["image"].shape[0])), prep_rng, True)
    state, d_metrics = self.discriminator_step(state, batch, tx, d_rng)
    state, g_metrics = self.generator_step(state, batch, tx, g_rng)
    metrics = {**d_metrics, **g_metrics}
    # One number for the progress line and the loss curve: the sum of the two players' losses.
    metrics["train/loss"] = metrics["train/d_loss"] + metrics["train/g_loss"]
    return state, metrics

  # --- eval ----------------------------------------------------------------------
  def eval_step(self, variables, batch):
    batch = self.prepare(batch, None, False)
    params = variables["params"]
    logits, _ = self.discriminate(params, {k: v for k, v in variables.items() if k != "params"},
                                  batch["image"], batch, False)
    return {"d_real": jnp.sum(jax.nn.sigmoid(logits) * batch["mask"]), "count": jnp.sum(batch["mask"])}

  def sample(self, variables, z, conditions, rng):
    """Generated images for latents z and `conditions` ({'label': ...}), BN in inference mode."""
    if "sample" not in self._fns:
      def fn(variables, batch, rng):
        state = {k: v for k, v in variables.items() if k != "params"}
        return self.generate(variables["params"], state, batch, rng, False)[0]
      self._fns["sample"] = jax.jit(fn)
    batch = self.prepare({"z": z, **{k: jnp.asarray(v) for k, v in conditions.items()}}, None, False)
    return self._fns["sample"](variables, batch, rng)

  def sample_conditions(self, n) -> Dict[str, np.ndarray]:
    """What the n evaluation samples are conditioned on: every class in turn."""
    return {"label": np.arange(n, dtype=np.int32) % self.num_classes}

  def grid_conditions(self, n) -> Dict[str, np.ndarray]:
    """One class per row of the grid."""
    return {"label": (np.arange(n, dtype=np.int32) // int(self.gan.grid_size)) % self.num_classes}

  def on_eval(self, variables, step, workdir):
    metrics = {}
    seed = int(self.config.train.seed)
    n = int(self.gan.fid_samples)
    if n > 0:
      metrics.update(self.sample_metrics(variables, n, jax.random.PRNGKey(seed + 2)))
    self.write_grid(variables, os.path.join(workdir, "plots", f"samples_step{step:06d}.png"),
                    jax.random.PRNGKey(seed + 1))
    return metrics

  def generated(self, variables, n, rng, chunk=500):
    """n samples ([n, H, W, C] numpy) and the conditions they were asked for."""
    conditions = self.sample_conditions(n)
    images = []
    for i in range(0, n, chunk):
      k = jax.random.fold_in(rng, i)
      part = {name: c[i:i + chunk] for name, c in conditions.items()}
      m = len(part["label"])
      images.append(np.asarray(self.sample(variables, self.latents(jax.random.fold_in(k, 0), m), part,
                                           jax.random.fold_in(k, 1))))
    return np.concatenate(images), conditions

  def real_features(self, extractor):
    """Features of the held-out split (computed once per extractor, batch by batch: only features are kept,
    so a split of large images, e.g. CUB at 256x256, never sits in memory as a whole)."""
    if self._real_features is None or self._real_features[0] != extractor.name:
      from jaxcnn import data as data_lib
      features = []
      for batch in data_lib.eval_iterator(self.config.data, global_batch_size=int(self.config.eval.batch_size),
                                          process_index=0, process_count=1):
        images = np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0]
        if len(images):
          features.append(extractor.logits_and_features(images)[1])
      self._real_features = (extractor.name, np.concatenate(features))
    return self._real_features[1]

  def sample_metrics(self, variables, n, rng):
    """FID, Inception Score and (conditional models) the classifier's agreement with the asked-for class."""
    from jaxcnn.eval import extractor as extractor_lib
    from jaxcnn.eval import fid as fid_lib
    images, conditions = self.generated(variables, n, rng)
    extractor = extractor_lib.get_extractor(self.extractor_data_config())
    logits, features = extractor.logits_and_features(images)
    metrics = {"eval/fid": fid_lib.fid(self.real_features(extractor), features),
               "eval/inception_score": fid_lib.inception_score(logits, splits=1)[0],
               "eval/fid_extractor": extractor.name}
    if self.has_class_condition:
      metrics["eval/cond_accuracy"] = float(np.mean(np.argmax(logits, -1) == conditions["label"]))
    return metrics

  def extractor_data_config(self):
    """The data config the feature extractor is trained on: the run's, at no more than 32x32 (see module doc)."""
    data_cfg = copy.deepcopy(self.config.data)
    if self.image_size > EXTRACTOR_MAX_SIZE:
      data_cfg.image_size = EXTRACTOR_MAX_SIZE
    return data_cfg

  @property
  def has_class_condition(self) -> bool:
    return self.conditional

  def write_grid(self, variables, path, rng):
    """A grid_size x grid_size PNG of samples from fixed latents (the same at every eval)."""
    from jaxcnn.eval import grids
    g = int(self.gan.grid_size)
    images = np.asarray(self.sample(variables, self.latents(jax.random.fold_in(rng, 0), g * g),
                                    self.grid_conditions(g * g), jax.random.fold_in(rng, 1)))
    if jax.process_index() == 0:
      grids.save_grid(path, images, g, (-1.0, 1.0))


def _keep_own_stats(old_state, new_state, net):
  """old_state with only `net`'s BatchNorm statistics taken from new_state."""
  if "batch_stats" not in old_state or net not in old_state["batch_stats"]:
    return old_state
  stats = {**old_state["batch_stats"], net: new_state["batch_stats"][net]}
  return {**old_state, "batch_stats": stats}


# ------------------------------------------------------------------------------ StackGAN

class StackGAN(GAN):
  """One StackGAN stage: `stackgan_stage1` or `stackgan_stage2` (which needs `stackgan.stage1_workdir`).

  Samples for evaluation draw the condition through Conditioning Augmentation
  as in training (the authors' test-time sampling).
  """

  def __init__(self, config, data_info, axis_name=None):
    self.sg = _merged(stackgan_defaults(), config.get("stackgan"))
    if self.sg.embedding not in ("label", "data"):
      raise unknown("stackgan.embedding", self.sg.embedding, ("label", "data"))
    self.stage = 2 if config.model.name == "stackgan_stage2" else 1
    if config.model.name not in ("stackgan_stage1", "stackgan_stage2"):
      raise UserError(f"task 'stackgan' trains model stackgan_stage1 or stackgan_stage2, got '{config.model.name}'")
    if self.sg.embedding == "label":
      table = np.random.default_rng(int(self.sg.embed_seed)).normal(
          size=(int(data_info.num_classes), int(self.sg.embed_dim)))
      self.label_table = table.astype(np.float32)
    self.stage1 = None
    self._conditions = None
    if self.stage == 2:
      self.stage1 = load_stage1(self.sg.stage1_workdir, config, data_info)
    super().__init__(config, data_info, axis_name)
    if self.gan.conditional:
      raise UserError("StackGAN is conditioned on embeddings: leave gan.conditional False")

  def make_model(self, config, axis_name):
    extra = dict(image_size=self.image_size, channels=self.channels)
    if self.stage == 2:
      extra["lowres_size"] = self.stage1.model.image_size
    return create_model(config.model.name, **model_kwargs(config.model, config.train, axis_name, **extra))

  def latents(self, rng, n):
    dim = self.stage1.model.latent_dim if self.stage == 2 else self.model.latent_dim
    return jax.random.normal(rng, (n, dim), jnp.float32)

  @property
  def has_class_condition(self) -> bool:
    return True  # label embeddings stand for the class; CUB text embeddings describe an image of the class

  def sample_conditions(self, n):
    if self.sg.embedding == "label":
      return super().sample_conditions(n)
    embeddings, labels = self._held_out_conditions()
    pick = np.arange(n) % len(labels)
    return {"label": labels[pick], "embedding": embeddings[pick]}

  def grid_conditions(self, n):
    if self.sg.embedding == "label":
      return super().grid_conditions(n)
    return self.sample_conditions(n)

  def _held_out_conditions(self):
    """(embeddings, labels) of the held-out split: what samples are conditioned on with data embeddings."""
    if self._conditions is None:
      from jaxcnn import data as data_lib
      embs, labels = [], []
      for batch in data_lib.eval_iterator(self.config.data, global_batch_size=int(self.config.eval.batch_size),
                                          process_index=0, process_count=1):
        keep = np.asarray(batch["mask"]) > 0
        e = np.asarray(batch["embedding"])[keep]
        embs.append(e[:, 0] if e.ndim == 3 else e)
        labels.append(np.asarray(batch["label"])[keep])
      self._conditions = (np.concatenate(embs).astype(np.float32), np.concatenate(labels).astype(np.int32))
    return self._conditions

  def prepare(self, batch, rng, train):
    """Adds batch['embedding'] [B, D]: the label's vector, or one of the data's caption embeddings."""
    if self.sg.embedding == "label":
      return dict(batch, embedding=jnp.asarray(self.label_table)[batch["label"]])
    if "embedding" not in batch:
      raise UserError(f"stackgan.embedding='data' needs examples with an 'embedding' field (dataset cub_stackgan); "
                      f"data.name='{self.config.data.name}' has none: use stackgan.embedding='label'")
    e = batch["embedding"]
    if e.shape[-1] != int(self.sg.embed_dim):
      raise UserError(f"the data's embeddings are {e.shape[-1]}-d but stackgan.embed_dim={self.sg.embed_dim}: "
                      f"set stackgan.embed_dim={e.shape[-1]}")
    if e.ndim == 3:  # several captions per image: a random one when training (as the authors), the first otherwise
      if train:
        i = jax.random.randint(rng, (e.shape[0],), 0, e.shape[1])
        e = jnp.take_along_axis(e, i[:, None, None], axis=1)[:, 0]
      else:
        e = e[:, 0]
    return dict(batch, embedding=e.astype(jnp.float32))

  def init(self, rng, batch):
    n = batch["image"].shape[0]
    if self.sg.embedding == "data":
      batch = dict(batch, embedding=jnp.zeros((n, int(self.sg.embed_dim)), jnp.float32))
    batch = self.prepare(batch, None, False)
    if self.stage == 1:
      variables = self.model.init(rng, jnp.zeros((n, self.model.latent_dim)), batch["embedding"], train=False)
    else:
      low = jnp.zeros((n, self.model.lowres_size, self.model.lowres_size, self.channels))
      variables = self.model.init(rng, low, batch["embedding"], train=False)
      variables = dict(variables, stage1=jax.tree.map(jnp.asarray, self.stage1.variables))
    return variables

  def _ca_keys(self, rng):
    return (None, None) if rng is None else tuple(jax.random.split(rng))

  def generate(self, params, model_state, batch, rng, train):
    k1, k2 = self._ca_keys(rng)
    if self.stage == 1:
      (fake, mu, logvar), model_state = self._apply(params, model_state, "generate", batch["z"],
                                                    batch["embedding"], k1, train=train)
    else:
      low = self.stage1.model.apply(model_state["stage1"], batch["z"], batch["embedding"], k1, train=False,
                                    method="generate")[0]
      (fake, mu, logvar), model_state = self._apply(params, model_state, "generate", jax.lax.stop_gradient(low),
                                                    batch["embedding"], k2, train=train)
    return fake, {"mu": mu, "logvar": logvar}, model_state

  def discriminate(self, params, model_state, images, batch, train):
    """((cond_logits, uncond_logits or None), model_state) of D on `images` with batch['embedding']."""
    return self._apply(params, model_state, "discriminate", images, batch["embedding"], train=train)

  def roll_batch(self, x):
    """x rolled by one example over the global batch: on the pmap path each device takes its slice of the
    rolled global batch, so the wrong pairs are those of the jit path (a per-device roll of a batch of one
    would pair every image with its own embedding)."""
    if not self.axis_name:
      return jnp.roll(x, 1, axis=0)
    rolled = jnp.roll(jax.lax.all_gather(x, self.axis_name, tiled=True), 1, axis=0)
    n = x.shape[0]
    return jax.lax.dynamic_slice_in_dim(rolled, jax.lax.axis_index(self.axis_name) * n, n)

  def discriminator_loss(self, params, model_state, batch, fake):
    kind, c = self.gan.loss, float(self.sg.uncond_coeff)
    wrong_emb = self.roll_batch(batch["embedding"])
    # A "mismatched" pair of the same class is no mismatch: leave it out.
    mismatch = (batch["label"] != self.roll_batch(batch["label"])).astype(jnp.float32)
    (real, ureal), model_state = self.discriminate(params, model_state, batch["image"], batch, True)
    (wrong, _), model_state = self.discriminate(params, model_state, batch["image"], dict(batch, embedding=wrong_emb),
                                                True)
    (fake_l, ufake), model_state = self.discriminate(params, model_state, fake, batch, True)
    real_t, fake_t = discriminator_terms(kind, real, fake_l)
    _, wrong_t = discriminator_terms(kind, real, wrong)
    wrong_loss = jnp.sum(wrong_t * mismatch) / jnp.maximum(jnp.sum(mismatch), 1.0)
    if c > 0 and ureal is not None:
      ureal_t, ufake_t = discriminator_terms(kind, ureal, ufake)
      loss = ((jnp.mean(real_t) + c * jnp.mean(ureal_t)) / (1 + c)
              + (jnp.mean(fake_t) + wrong_loss + c * jnp.mean(ufake_t)) / (2 + c))
    else:
      loss = jnp.mean(real_t) + 0.5 * (jnp.mean(fake_t) + wrong_loss)
    metrics = {"train/d_loss": loss, "train/d_real": jnp.mean(jax.nn.sigmoid(real)),
               "train/d_wrong": jnp.mean(jax.nn.sigmoid(wrong)), "train/d_fake": jnp.mean(jax.nn.sigmoid(fake_l))}
    return loss, model_state, metrics

  def generator_loss(self, params, model_state, batch, fake, extra):
    (logits, ulogits), _ = self.discriminate(params, model_state, fake, batch, True)
    adv = jnp.mean(generator_term(self.gan.loss, logits))
    c = float(self.sg.uncond_coeff)
    if c > 0 and ulogits is not None:
      adv = adv + c * jnp.mean(generator_term(self.gan.loss, ulogits))
    # The authors' KL: mean over batch and condition dimensions.
    kl = jnp.mean(gaussian_kl(extra["mu"], extra["logvar"])) / extra["mu"].shape[-1]
    loss = adv + float(self.sg.kl_coeff) * kl
    return loss, {"train/g_loss": loss, "train/g_adv": adv, "train/kl": kl}

  def eval_step(self, variables, batch):
    batch = self.prepare(batch, None, False)
    state = {k: v for k, v in variables.items() if k != "params"}
    (logits, _), _ = self.discriminate(variables["params"], state, batch["image"], batch, False)
    return {"d_real": jnp.sum(jax.nn.sigmoid(logits) * batch["mask"]), "count": jnp.sum(batch["mask"])}

  def write_grid(self, variables, path, rng):
    super().write_grid(variables, path, rng)
    if self.stage == 2:
      self._write_stage1_grid(variables, path.replace("samples_", "samples_stage1_"), rng)

  def _write_stage1_grid(self, variables, path, rng):
    """The Stage-I images the Stage-II samples refine (same z and conditions), for side-by-side viewing."""
    from jaxcnn.eval import grids
    g = int(self.gan.grid_size)
    conditions = {k: jnp.asarray(v) for k, v in self.grid_conditions(g * g).items()}
    batch = self.prepare({"z": self.latents(jax.random.fold_in(rng, 0), g * g), **conditions}, None, False)
    k1, _ = self._ca_keys(jax.random.fold_in(rng, 1))
    low = self.stage1.model.apply(variables["stage1"], batch["z"], batch["embedding"], k1, train=False,
                                  method="generate")[0]
    low = np.asarray(low)
    if jax.process_index() == 0:
      grids.save_grid(path, low, g, (-1.0, 1.0))


class Stage1:
  """A trained Stage-I generator: its model and variables (numpy)."""

  def __init__(self, model, variables):
    self.model, self.variables = model, variables


def load_stage1(workdir: str, config, data_info) -> Stage1:
  """The Stage-I pair of `workdir` (its config.json and newest checkpoint), generator variables only."""
  if not workdir:
    raise UserError("stackgan_stage2 needs the workdir of a trained Stage-I run: set stackgan.stage1_workdir")
  cfg_path = os.path.join(workdir, "config.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.exists(cfg_path) or not os.path.isdir(ckpt_dir):
    raise UserError(f"stackgan.stage1_workdir '{workdir}' has no config.json and checkpoints/ of a Stage-I run")
  with open(cfg_path) as f:
    s1 = json.load(f)
  if s1.get("model", {}).get("name") != "stackgan_stage1":
    raise UserError(f"stackgan.stage1_workdir '{workdir}' is a run of model '{s1.get('model', {}).get('name')}', "
                    f"not stackgan_stage1")
  ours = _merged(stackgan_defaults(), config.get("stackgan"))
  theirs = dict(stackgan_defaults(), **s1.get("stackgan", {}))
  for key in ("embedding", "embed_dim", "embed_seed"):
    if theirs[key] != ours[key]:
      raise UserError(f"Stage I ({workdir}) used stackgan.{key}={theirs[key]!r}, this run {ours[key]!r}: "
                      f"both stages must see the same embeddings")
  if s1.get("data", {}).get("name") != config.data.name:
    raise UserError(f"Stage I ({workdir}) was trained on '{s1.get('data', {}).get('name')}', this run on "
                    f"'{config.data.name}'")
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state",))
  step = mngr.latest_step()
  if step is None:
    raise UserError(f"stackgan.stage1_workdir '{workdir}' has no checkpoint")
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  kwargs = {k: v for k, v in s1["model"].items() if k != "name"}
  size = int(s1["data"].get("image_size") or data_info.image_shape[0])
  channels = int(s1["data"].get("channels") or data_info.image_shape[2])
  kwargs.setdefault("image_size", size)
  kwargs.setdefault("channels", channels)
  model = create_model("stackgan_stage1", **kwargs)
  variables = {"params": {"generator": state["params"]["generator"]}}
  if "batch_stats" in state.get("model_state", {}):
    variables["batch_stats"] = {"generator": state["model_state"]["batch_stats"]["generator"]}
  log.info("Stage I generator from %s, step %d", workdir, step)
  return Stage1(model, jax.tree.map(np.asarray, variables))
