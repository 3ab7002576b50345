"""The keys every experiment has; an experiment starts from `base_config()` and changes what it needs."""
import ml_collections

from jaxcnn.data import default_data_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "classification"

  # Anything besides `name` is passed to create_model (and any option the model has may be set on the CLI).
  c.model = ml_collections.ConfigDict({"name": "lenet5_modern"})
  c.data = default_data_config()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 128          # global, over all devices and processes
  c.train.seed = 0
  c.train.log_every = 10
  c.train.parallel = "jit"          # jit | pmap (legacy)
  c.train.fsdp = False              # shard parameters and optimizer state over the data axis
  c.train.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
  c.train.grad_accum_steps = 1
  c.train.ema_decay = 0.0           # > 0: evaluate an EMA of the parameters
  c.train.loss = "cross_entropy"    # cross_entropy | focal | poly1 | apl | bce | rbf_map (jaxcnn/tasks/classification.py)
  c.train.loss_options = {}         # keyword arguments of the loss, e.g. {'gamma': 2.0} (focal), {'epsilon': 2.0} (poly1)
  c.train.class_weights = ()        # one weight per class (classification losses); () = all 1
  c.train.label_smoothing = 0.0
  c.train.aux_loss_weight = 0.3     # auxiliary heads (GoogLeNet aux_logits=True): loss = main + w * (aux1 + aux2)
  c.train.mixup_alpha = 0.0         # > 0: Mixup with Beta(alpha, alpha) (classification)
  c.train.cutmix_alpha = 0.0        # > 0: CutMix
  c.train.cutmix_prob = 0.5         # with both on: the share of mixed steps that use CutMix
  c.train.mix_prob = 1.0            # share of steps that are mixed at all
  # Stop when an eval metric stops improving (jaxcnn/train/early_stopping.py); metric '' = off.
  c.train.early_stopping = ml_collections.ConfigDict(
      {"metric": "", "mode": "auto", "patience": 5, "min_delta": 0.0})

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"            # sgd | nesterov | adam | adamw | lamb
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"       # cosine | step | linear | constant | poly (after linear warmup)
  c.optim.warmup_steps = 0
  c.optim.end_lr_factor = 0.0
  c.optim.step_at = (0.5, 0.75)     # step schedule: fractions of training where lr *= step_factor
  c.optim.step_factor = 0.1
  c.optim.poly_power = 0.9          # poly schedule: lr * (1 - t/T) ** poly_power (DeepLab)
  c.optim.momentum = 0.9
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.decay_all = False         # False: no decay on biases and norm scales
  c.optim.grad_clip_norm = 0.0      # 0: off
  c.optim.l1 = 0.0                  # + l1 * sum|w| in the loss (same mask as weight decay); with l2: elastic net
  c.optim.l2 = 0.0                  # + l2 * sum w^2 in the loss (coupled: goes through Adam's moments, unlike AdamW)
  c.optim.lr_multipliers = ()       # ((regex over 'a/b/kernel' paths, m), ...): the first match trains at m x lr

  # Start from pretrained weights (a torchvision/timm state dict or a jaxcnn workdir): see jaxcnn/train/finetune.py.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.weights = ""
  c.finetune.converter_name = ""    # the weights' model name for the converter (default: model.name)
  c.finetune.into = ""              # parameter subtree to load them into, e.g. 'backbone' ('': the whole model)
  c.finetune.from_subtree = ""      # load only this subtree of the weights, e.g. 'visual' (LiT: a CLIP's image tower)
  c.finetune.freeze = ""            # regex over 'a/b/kernel' parameter paths to keep fixed, e.g. '^(?!fc/)'

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0                  # 0: only at the end
  c.eval.batch_size = 512

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500          # 0: only at the end
  c.checkpoint.keep = 3
  c.checkpoint.keep_best = True     # also keep the best checkpoint by the task's headline eval metric
  c.checkpoint.use_async = True
  c.checkpoint.start_fresh = False  # True: set every checkpoint of the workdir aside (kept, renamed) and start over
  return c


def cifar10_sgd_config(model_name: str, *, lr: float = 0.1, optimizer: str = "sgd", decay_all: bool = True,
                       epochs: int = 200, batch_size: int = 128, weight_decay: float = 5e-4):
  """The common CIFAR-10 recipe of the reference repos (kuangliu/pytorch-cifar): random crop + flip, SGD with
  momentum 0.9 and weight decay 5e-4 (on every parameter, as torch's SGD), cosine from `lr` over `epochs` (200),
  batch 128; eval and a checkpoint every 10 epochs. CIFAR-10 is downloaded and prepared on first use."""
  c = base_config()
  c.model.name = model_name
  c.data.name = "cifar10"
  c.data.augment = "crop,flip"
  c.data.download = True
  steps_per_epoch = -(-50_000 // batch_size)  # the last, partial batch of an epoch counts, as in torch
  c.train.steps = epochs * steps_per_epoch
  c.train.batch_size = batch_size
  c.train.log_every = 100
  c.optim.name = optimizer
  c.optim.lr = lr
  c.optim.weight_decay = weight_decay
  c.optim.decay_all = decay_all
  c.eval.every = 10 * steps_per_epoch
  c.checkpoint.every = 10 * steps_per_epoch
  return c


def segmentation_config() -> ml_collections.ConfigDict:
  """base_config() for task 'segmentation', with its own section (see jaxcnn/tasks/segmentation.py)."""
  from jaxcnn.tasks.segmentation import default_config
  c = base_config()
  c.task = "segmentation"
  c.segmentation = default_config()
  c.checkpoint.keep_best = True  # best by eval/miou
  return c


def detection_config() -> ml_collections.ConfigDict:
  """base_config() for task 'detection', with its own section (see jaxcnn/tasks/detection.py)."""
  from jaxcnn.tasks.detection import default_config
  c = base_config()
  c.task = "detection"
  c.detection = default_config()
  c.checkpoint.keep_best = True  # best by eval/map
  return c
