"""Model registry: `@register_model` on a factory, `create_model(name, **overrides)`.

A factory is a linen Module class or a function returning one; overrides are
its keyword arguments (`num_classes`, `dtype`, widths, ...).
"""
import dataclasses
import inspect
from typing import Callable, Dict, Optional

import flax.linen as nn

from jaxcnn.errors import UserError, unknown

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name_or_fn=None, **defaults):
  """Registers a factory under its name (or the given one) with default kwargs.

  Usage: `@register_model` or `@register_model('resnet18', depth=18)`.
  """
  def wrap(fn, name=None):
    key = name or fn.__name__.lower()
    if key in _MODELS:
      raise ValueError(f"model '{key}' is registered twice")
    _MODELS[key] = (fn, dict(defaults))
    return fn

  if callable(name_or_fn):
    return wrap(name_or_fn)
  return lambda fn: wrap(fn, name_or_fn)


def _accepted_kwargs(fn):
  if inspect.isclass(fn) and dataclasses.is_dataclass(fn):
    return {f.name for f in dataclasses.fields(fn) if f.init and f.name not in ("parent", "name")}
  params = inspect.signature(fn).parameters
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return None  # anything goes; the function checks itself
  return set(params)


def create_model(name: str, **overrides) -> nn.Module:
  """Returns the registered linen Module `name`, with keyword overrides."""
  _import_models()
  if name not in _MODELS:
    raise unknown("model", name, _MODELS)
  fn, defaults = _MODELS[name]
  kwargs = {**defaults, **overrides}
  accepted = _accepted_kwargs(fn)
  if accepted is not None:
    bad = sorted(set(kwargs) - accepted)
    if bad:
      raise UserError(f"model '{name}' has no option {', '.join(bad)} (options: {', '.join(sorted(accepted))})")
  return fn(**kwargs)


def model_options(name: str) -> set:
  """The keyword arguments `create_model(name, ...)` accepts (None: any)."""
  _import_models()
  if name not in _MODELS:
    raise unknown("model", name, _MODELS)
  return _accepted_kwargs(_MODELS[name][0])


def model_option_defaults(name: str) -> dict:
  """{option: default value} of model `name` (registered defaults over the class's field defaults).

  Options without a default value, or of a factory function without a signature default, are left out.
  """
  _import_models()
  if name not in _MODELS:
    return {}
  fn, registered = _MODELS[name]
  defaults = {}
  if inspect.isclass(fn) and dataclasses.is_dataclass(fn):
    for f in dataclasses.fields(fn):
      if f.init and f.name not in ("parent", "name") and f.default is not dataclasses.MISSING:
        defaults[f.name] = f.default
  else:
    for p in inspect.signature(fn).parameters.values():
      if p.default is not inspect.Parameter.empty:
        defaults[p.name] = p.default
  defaults.update(registered)
  return defaults


def pretrained_adapter(name: str) -> Optional[Callable[[dict, dict], dict]]:
  """The fine-tuning hook of model `name`, or None if it is not registered or has none.

  A model class (or factory) may define `adapt_pretrained(variables, target) -> variables`:
  converted weights of that architecture brought to the layout and shapes of `target`
  (a model's variables, arrays or shape structs), e.g. ViT's stacked scan blocks and
  resampled position embedding. `jaxcnn.train.finetune` calls it, so the trainer stays
  model-agnostic.
  """
  _import_models()
  if name not in _MODELS:
    return None
  return getattr(_MODELS[name][0], "adapt_pretrained", None)


def list_models(pattern: str = "") -> list:
  """Sorted registered names containing `pattern`."""
  _import_models()
  return sorted(n for n in _MODELS if pattern in n)


def _import_models():
  import jaxcnn.models  # noqa: F401  (registers every family on import)
