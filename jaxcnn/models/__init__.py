"""Every model family, one module each; importing this package registers them all.

Adding a family is one new file here: it is picked up automatically.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
  if not _info.name.startswith("_"):
    importlib.import_module(f"{__name__}.{_info.name}")
