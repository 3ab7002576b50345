"""One experiment per module: `get_config()` returns its ml_collections ConfigDict."""
import importlib
import pkgutil

from jaxcnn.errors import unknown


def experiment_names():
  return sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_") and i.name != "common")


def get_experiment(name: str):
  """(config, docstring) of experiment `name`."""
  if name not in experiment_names():
    raise unknown("experiment", name, experiment_names())
  module = importlib.import_module(f"{__name__}.{name}")
  return module.get_config(), (module.__doc__ or "").strip()
