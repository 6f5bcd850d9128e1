"""Errors jaxinterp raises at its public boundary.

Every check on user input happens before tracing and raises one of these, with a message
that names what was wrong and what was expected. They subclass the built-in exception a
user would reach for (``ValueError``, ``KeyError``...) so existing ``except`` clauses work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JaxinterpError(Exception):
    """Base class of every jaxinterp error."""


class ConfigError(JaxinterpError, ValueError):
    """A configuration is inconsistent or unsupported."""


class ShapeError(JaxinterpError, ValueError):
    """An array has the wrong shape, rank or dtype."""


class IndexRangeError(JaxinterpError, IndexError):
    """A layer, position, head, neuron or feature index outside its range.

    Concrete indices are never wrapped modulo a size: out of range raises this, and a
    negative index counts from the end as in Python.
    """


class ArgumentTypeError(JaxinterpError, TypeError):
    """An argument of the wrong kind (a tuple where an intervention was expected...)."""


class TokenError(JaxinterpError, ValueError):
    """Token ids out of range, or a sequence longer than the model context."""


class HookNameError(JaxinterpError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class CheckpointError(JaxinterpError, ValueError):
    """A checkpoint is missing, corrupt, or from a different configuration."""


class DataError(JaxinterpError, ValueError):
    """A corpus, tokenizer or dataset is missing, empty or malformed."""


class NonFiniteLossError(JaxinterpError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


def nearest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name``, for 'did you mean' messages."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if len(close) < n:
        tail = name.rsplit(".", 1)[-1]
        close += [c for c in candidates if c.endswith(tail) and c not in close][: n - len(close)]
    return close


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    close = nearest(name, candidates)
    hint = f" Nearest valid names: {', '.join(close)}." if close else ""
    return f"Unknown {kind} {name!r}.{hint}"
