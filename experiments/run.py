"""Runs one experiment: python -m experiments.run --exp=NAME [--workdir=DIR] [--config.KEY=VALUE ...]

    --exp=list | --list     print the experiments
    --print_config          print the resolved config and exit
Any config key can be overridden with --config.a.b=value (type-checked against the
config); options of the selected model can be set as --config.model.<option>=value.
A workdir with checkpoints is resumed; without --workdir a new one is made under ./workdirs.
"""
import ast
import logging
import math
import os
import sys
import time

USAGE = "usage: python -m experiments.run --exp=NAME [--workdir=DIR] [--config.KEY=VALUE ...] | --list"


def parse_args(argv):
  """--key=value flags -> (options dict, [(dotted_key, raw_value)] config overrides)."""
  options, overrides = {}, []
  for arg in argv:
    if arg in ("-h", "--help"):
      options["help"] = True
      continue
    if arg in ("--list", "--print_config"):
      options[arg[2:]] = True
      continue
    if not arg.startswith("--") or "=" not in arg:
      raise UserError(f"cannot read argument '{arg}': use --name=value ({USAGE})")
    key, value = arg[2:].split("=", 1)
    if key.startswith("config."):
      overrides.append((key[len("config."):], value))
    elif key in ("exp", "workdir"):
      options[key] = value
    else:
      raise UserError(f"unknown flag --{key} (flags: --exp, --workdir, --config.KEY, --list, --print_config)")
  return options, overrides


def parse_value(raw: str, current, key: str):
  """The override string as the type of the value it replaces."""
  def bad(kind):
    return UserError(f"config key {key} expects {kind}, got '{raw}'")
  if isinstance(current, bool):
    low = raw.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise bad("a bool (true/false)")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(current, float):
    try:
      value = float(raw)
    except ValueError:
      raise bad("a number") from None
    if math.isnan(value):
      raise bad("a number (not nan)")
    return value
  if isinstance(current, str):
    return raw
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = tuple(v.strip() for v in raw.split(",") if v.strip())
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    kinds = {_kind(v) for v in current}
    if len(kinds) == 1:  # a homogeneous tuple keeps its element type: (0.5, 0.75) takes numbers only
      kind = kinds.pop()
      try:
        value = tuple(_as_kind(v, kind) for v in value)
      except (TypeError, ValueError):
        raise bad(f"a comma list of {kind}s") from None
    return value
  try:  # None or a key the config did not have: a Python literal, else a string
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _kind(value):
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, (int, float)):
    return "number"
  return "string" if isinstance(value, str) else "value"


def _as_kind(value, kind):
  if kind == "number":
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(value)
    if math.isnan(value):
      raise ValueError(value)
  elif kind == "bool" and not isinstance(value, bool):
    raise ValueError(value)
  return value


def parse_model_option(raw: str, default, key: str):
  """A model option given on the command line, typed by the option's default (dtype names checked)."""
  leaf = key.rsplit(".", 1)[-1]
  if leaf in ("dtype", "param_dtype"):
    import numpy as np
    import jax.numpy as jnp
    try:
      dtype = jnp.dtype(raw)
    except TypeError:
      dtype = None
    if dtype is None or not np.issubdtype(dtype, np.floating):
      raise UserError(f"config key {key} expects a floating dtype name (float32, bfloat16, float16), got '{raw}'")
    return raw
  if default is None or not isinstance(default, (bool, int, float, str, tuple, list)):
    return parse_value(raw, None, key)
  return parse_value(raw, default, key)


def apply_overrides(config, overrides):
  """Sets each dotted key; unknown keys are errors, except options the chosen model accepts."""
  from jaxcnn.registry import create_model, list_models, model_options  # noqa: F401
  # The model name first, so the model's options are known when its other keys are checked.
  overrides = sorted(overrides, key=lambda kv: kv[0] != "model.name")
  for key, raw in overrides:
    *path, leaf = key.split(".")
    node = config
    for i, part in enumerate(path):
      if part not in node or not hasattr(node[part], "keys"):
        raise UserError(f"unknown config key '{key}': no section '{'.'.join(path[:i + 1])}' "
                        f"(sections: {', '.join(k for k in node.keys() if hasattr(node[k], 'keys'))})")
      node = node[part]
    if leaf not in node:
      options = model_options(config.model.name) if path == ["model"] else set()
      if path == ["model"] and (options is None or leaf in options):
        from jaxcnn.registry import model_option_defaults
        default = model_option_defaults(config.model.name).get(leaf)
        with node.unlocked():
          node[leaf] = parse_model_option(raw, default, key)
        continue
      known = ", ".join(sorted(node.keys()))
      extra = f"; model '{config.model.name}' options: {', '.join(sorted(options))}" if options else ""
      raise UserError(f"unknown config key '{key}' (keys in {'.'.join(path) or 'config'}: {known}{extra})")
    value = (parse_model_option(raw, node[leaf], key) if path == ["model"] and leaf != "name"
             else parse_value(raw, node[leaf], key))
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise UserError(f"config key {key}: {e}") from None
    if key == "model.name" and value not in list_models():
      from jaxcnn.errors import unknown
      raise unknown("model (model.name)", value, list_models())


def main(argv) -> int:
  options, overrides = parse_args(argv)
  from experiments.configs import experiment_names, get_experiment
  if options.get("help"):
    print(__doc__)
    return 0
  if options.get("list") or options.get("exp") == "list":
    for name in experiment_names():
      doc = get_experiment(name)[1]
      print(f"{name:24s} {doc.splitlines()[0] if doc else ''}")
    return 0
  if "exp" not in options:
    raise UserError(f"--exp is required ({USAGE}); --list shows the experiments")
  config, _ = get_experiment(options["exp"])
  apply_overrides(config, overrides)
  if options.get("print_config"):
    print(config)
    return 0

  from jaxcnn.train import sharding
  sharding.maybe_initialize_distributed()
  import jax
  from jaxcnn.train import train_and_evaluate
  from jaxcnn.train.trainer import validate
  validate(config)
  workdir = options.get("workdir") or os.path.join("workdirs", f"{options['exp']}-{time.strftime('%Y%m%d-%H%M%S')}")
  log.info("experiment %s, workdir %s", options["exp"], os.path.abspath(workdir))
  summary = train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    shown = {k: v for k, v in summary.items() if k.startswith("eval/") and k.count("/") == 1}  # no per-class keys
    for k, v in shown.items():
      print(f"final {k} = {v:.4f}" if isinstance(v, float) else f"final {k} = {v}")
    key = summary.get("headline_metric")  # the task's own (eval/accuracy, eval/miou, ...), last line
    value = summary.get(key)
    figure = f"{value:.4f}" if isinstance(value, float) else str(value)
    print(f"final {key}: {figure} ({config.data.name}, {summary['step']} steps, {summary['wall_time_s']:.0f} s); "
          f"outputs in {os.path.abspath(workdir)}")
  return 0


def _setup_logging():
  fmt = "%(asctime)s %(message)s"
  pid = os.environ.get("JAXCNN_PROCESS_ID")
  if pid and pid != "0":
    fmt = f"[process {pid}] " + fmt
  logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)
  for noisy in ("jax", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # Orbax logs every failed read or write with its whole traceback (through absl, so by file, not logger
  # name); the trainer reports each failure in one line.
  for handler in logging.getLogger().handlers:
    handler.addFilter(lambda record: f"{os.sep}orbax{os.sep}" not in record.pathname)
  for chatty in ("absl", "tensorflow_datasets"):  # their warnings repeat what our own messages say
    logging.getLogger(chatty).setLevel(logging.ERROR)
  try:
    import absl.logging
    absl.logging.set_verbosity(absl.logging.WARNING)
  except ImportError:
    pass


from jaxcnn.errors import UserError  # noqa: E402  (light import; keeps the flag parser above self-contained)

log = logging.getLogger("jaxcnn")

if __name__ == "__main__":
  _setup_logging()
  try:
    sys.exit(main(sys.argv[1:]))
  except UserError as e:
    status = getattr(e, "exit_status", 2)  # Preempted: state saved, 128 + the signal number (143 for SIGTERM)
    print(f"{'stopped' if status != 2 else 'error'}: {e}", file=sys.stderr)
    sys.exit(status)
  except KeyboardInterrupt:  # before training started: nothing to save
    print("interrupted before training started; nothing was saved", file=sys.stderr)
    sys.exit(130)
