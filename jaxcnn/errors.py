"""The one exception type that means "the user asked for something wrong".

The CLI prints a UserError as a single line and exits non-zero; anything else
is a bug and keeps its traceback.
"""
import difflib


class UserError(ValueError):
  """A bad name, value, shape or file given by the user."""


def unknown(kind: str, name: str, known) -> UserError:
  """`unknown model 'resnt18'; did you mean resnet18? known: ...`."""
  known = sorted(known)
  close = difflib.get_close_matches(str(name), known, n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  listing = ", ".join(known) if len(known) <= 40 else ", ".join(known[:40]) + ", ..."
  return UserError(f"unknown {kind} '{name}'{hint} (known: {listing})")
