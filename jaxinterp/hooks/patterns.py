"""Hook-name patterns: which hook names a string such as ``blocks.{l}.attn.hook_z`` selects.

Hook names are dot-separated paths (``blocks.3.attn.hook_z``, ``layers_0.mlp.hook_out``).
A pattern matches a whole name; its special parts are:

==========  ==============================================================================
``{l}``     a whole layer number: ``blocks.{l}.hook_out`` is ``blocks.0.hook_out`` ...
            ``blocks.11.hook_out`` (and ``layers_{l}.hook_out`` reads Flax's ``layers_3``)
``*``       any characters inside one part, never a dot: ``blocks.*.hook_resid_pre`` is
            every layer's ``hook_resid_pre`` and ``blocks.*.hook_out`` does not reach
            ``blocks.3.attn.hook_out``
``**``      any characters, dots included: ``**.hook_out`` is every module output at
            any depth, ``blocks.3.**`` everything inside layer 3
``?``       one character (not a dot); ``[ab]`` one of a set
==========  ==============================================================================

Everything else matches itself. ``?`` is a trap for layer numbers (``blocks.?.hook_out``
reaches layers 0-9 only), so a pattern whose ``?`` misses names that the same pattern with
``*`` would reach is an error naming the missed hooks (:func:`check_one_character`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from jaxinterp.errors import HookNameError

_SPECIAL = "*?[{"


def is_pattern(name: str) -> bool:
    """Whether ``name`` holds any pattern syntax (else it is one exact hook name)."""
    return any(c in name for c in _SPECIAL)


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern:
    """The regular expression of a hook-name pattern (see the module docstring)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if pattern.startswith("{l}", i):
            out.append(r"\d+")
            i += 3
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append(f"(?!\\.)[{body.replace(chr(92), chr(92) * 2)}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def matches(name: str, pattern: str) -> bool:
    """Whether the hook ``name`` is selected by ``pattern``."""
    if not is_pattern(pattern):
        return name == pattern
    return compile_pattern(pattern).match(name) is not None


def widened(pattern: str) -> str:
    """``pattern`` with each ``?`` made a ``*`` (what a user writing ``?`` usually meant)."""
    return re.sub(r"\?+", "*", pattern)


def check_one_character(pattern: str, names: Iterable[str]) -> None:
    """Raises if ``pattern``'s ``?`` silently skips names its ``*`` form would select.

    ``blocks.?.hook_out`` on a 12-layer model selects layers 0-9 and misses 10 and 11;
    that is an error, never a silent partial sweep.
    """
    if "?" not in pattern:
        return
    wide = widened(pattern)
    names = list(names)
    missed = [n for n in names if matches(n, wide) and not matches(n, pattern)]
    if missed:
        shown = ", ".join(missed[:4]) + (f" and {len(missed) - 4} more" if len(missed) > 4 else "")
        layer = re.sub(r"\?+", "{l}", pattern)
        raise HookNameError(
            f"pattern {pattern!r}: '?' matches exactly one character, so it misses {shown}. "
            f"Write {layer!r} for any layer number (or {wide!r} for any part).")


def dots_hint(pattern: str, names: Iterable[str]) -> str:
    """A hint for a pattern that matches nothing only because ``*`` stops at dots."""
    if "*" not in pattern or "**" in pattern:
        return ""
    deep = re.sub(r"(?<!\*)\*(?!\*)", "**", pattern)
    hits = [n for n in names if matches(n, deep)]
    if not hits:
        return ""
    return (f" ('*' stops at dots: {deep!r} would match {', '.join(hits[:3])}"
            f"{' ...' if len(hits) > 3 else ''})")


__all__ = ["check_one_character", "compile_pattern", "dots_hint", "is_pattern", "matches", "widened"]
