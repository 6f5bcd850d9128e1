"""The ``jaxinterp`` command.

    jaxinterp demo                      the main job: a one-layer LM, then SAEs on its MLP
    jaxinterp train --n-layers 4 ...    train a small LM on the embedded corpus
    jaxinterp train-sae --model M --site S   an SAE on any loadable model's hook site
    jaxinterp eval-sae --sae F --model M     evaluate an SAE file on a model
    jaxinterp browse RUN_DIR            every feature of a run's SAEs in an offline browser
    jaxinterp experiment --list         the reproductions available
    jaxinterp experiment NAME --help    one reproduction and its settings

Every recipe is configured by a frozen dataclass; each field is a flag
(``d_model`` -> ``--d-model``) with its one-line description and default in ``--help``.
``--config file.json`` loads several fields at once (flags still win). Settings are
checked before any work starts; a bad one prints ``error: ...`` and exits with status 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
import traceback
import typing
from collections.abc import Sequence
from typing import Any

from jaxinterp import recipes
from jaxinterp.errors import ConfigError, JaxinterpError

DEMO = "monosemanticity"  # the recipe `jaxinterp demo` runs
DEMO_DEFAULTS = {"name": "demo"}
# Subcommands that run one recipe with its dataclass flags: name -> (recipe, defaults, help)
COMMANDS: dict[str, tuple[str, dict, str]] = {
    "demo": (DEMO, DEMO_DEFAULTS, recipes.RECIPES[DEMO][3]),
    "train": ("train-lm", {}, "train a transformer LM on the embedded corpus (any LMConfig field as a flag)"),
    "train-sae": ("train-sae", {}, "train an SAE on a model's hook site (mesh and multi-host flags)"),
    "eval-sae": ("eval-sae", {}, "evaluate an SAE file (SAELens, Gemma Scope, sparsify) on a model"),
    "browse": ("browse", {}, "analyse every feature of a run's SAEs and write an offline feature browser"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every error prints the same way."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    t = hints.get(field.name, str)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args and typing.get_origin(t) is not None else t


def _typed(t: type, flag: str):
    def convert(text: str):
        try:
            return t(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {t.__name__}, got {text!r}") from None
    convert.__name__ = t.__name__
    return convert


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, defaults: dict | None = None) -> None:
    """One ``--flag`` per dataclass field, typed, described and defaulted from the dataclass."""
    defaults = defaults or {}
    parser.add_argument("--config", help="JSON file of field values (flags override it)")
    for f in dataclasses.fields(cls):
        default = defaults.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(cls, f)
        text = f.metadata.get("help", "")
        text = f"{text} (default: {default!r})" if text else f"(default: {default!r})"
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=_typed(t, flag), default=None, metavar=t.__name__.upper(), help=text)
        if f.metadata.get("positional"):  # also a bare argument: jaxinterp browse RUN_DIR
            parser.add_argument(f"{f.name}_positional", nargs="?", type=_typed(t, f.name.upper()), default=None,
                                metavar=f.name.upper(), help=f"same as {flag}")


def build_config(cls: type, args: argparse.Namespace, defaults: dict | None = None):
    """The recipe config from defaults, ``--config`` JSON and flags; checked before any work."""
    values = dict(defaults or {})
    if getattr(args, "config", None):
        try:
            with open(args.config) as fh:
                values.update(json.load(fh))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read --config {args.config}: {e}") from None
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        bare = getattr(args, f"{f.name}_positional", None)
        if v is not None and bare is not None and v != bare:
            raise ConfigError(f"{f.name} given twice: {bare!r} and --{f.name.replace('_', '-')} {v!r}")
        v = v if v is not None else bare
        if v is not None:
            values[f.name] = v
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown settings for {cls.__name__}: {sorted(unknown)}; valid: {sorted(known)}")
    for name, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"bad settings for {cls.__name__}: {e}") from None


def _run(name: str, args: argparse.Namespace, defaults: dict | None = None) -> int:
    cls, run = recipes.get(name)
    cfg = build_config(cls, args, defaults)
    summary = run(cfg)
    run_dir = getattr(cfg, "run_dir", None)
    if isinstance(summary, dict):
        shown = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
        print(json.dumps(shown, indent=2, default=str))
    if run_dir is not None:
        print(f"wrote {run_dir}/")
    return 0


def _recipe_parser(prog: str, name: str, defaults: dict | None = None,
                   description: str | None = None) -> argparse.ArgumentParser:
    cls, _ = recipes.get(name)
    parser = _Parser(prog=prog, description=description or recipes.RECIPES[recipes.canonical(name)][3])
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    add_dataclass_args(parser, cls, defaults)
    return parser


_PENDING = "_recipe_flags_pending"


class _RecipeSubparsers(argparse._SubParsersAction):
    """Subcommands whose recipe flags are added when the command is parsed: a recipe module is
    imported only by the command that runs it (``jaxinterp --help`` and ``jaxinterp train``
    import no SAE code), and its flags still come from its config dataclass."""

    def __call__(self, parser, namespace, values, option_string=None):
        chosen = self.choices.get(values[0])
        pending = chosen.get_default(_PENDING) if chosen is not None else None
        if pending is not None:
            name, defaults = pending
            chosen.set_defaults(**{_PENDING: None})
            add_dataclass_args(chosen, recipes.get(name)[0], defaults)
        super().__call__(parser, namespace, values, option_string)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxinterp", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.register("action", "parsers", _RecipeSubparsers)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (name, defaults, text) in COMMANDS.items():
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        p.set_defaults(**{_PENDING: (name, defaults)})  # its flags come when the command is used
    exp = sub.add_parser("experiment", help="run a reproduction by name (--list shows them)",
                         add_help=False, description="Run a reproduction: jaxinterp experiment NAME [flags]; "
                         "jaxinterp experiment NAME --help shows its flags.")
    exp.add_argument("name", nargs="?", help="experiment name (see --list)")
    exp.add_argument("--list", action="store_true", help="list the experiments")
    exp.add_argument("-h", "--help", action="store_true", help="this help, or an experiment's flags")
    exp.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def _unknown_flags(rest: list[str], parser: argparse.ArgumentParser) -> ConfigError:
    valid = sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))
    flags = [r.split("=", 1)[0] for r in rest if r.startswith("-")]
    hints = []
    for flag in flags:
        close = difflib.get_close_matches(flag, valid, n=3, cutoff=0.5)
        hints.append(f"{flag} (did you mean {', '.join(close)}?)" if close else flag)
    what = ", ".join(hints) if hints else " ".join(rest)
    return ConfigError(f"{parser.prog}: unrecognized arguments: {what}. Valid flags: {', '.join(valid)}")


def _list_experiments() -> None:
    width = max(len(n) for n in recipes.RECIPES)
    for name, (_, _, _, doc) in sorted(recipes.RECIPES.items()):
        print(f"{name:<{width}}  {doc}")


def _main(argv: list[str]) -> int:
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in COMMANDS:
        name, defaults, text = COMMANDS[args.command]
        if rest:
            raise _unknown_flags(rest, _recipe_parser(f"jaxinterp {args.command}", name, defaults, text))
        return _run(name, args, defaults)
    if not args.name:
        if args.help:
            parser._subparsers._group_actions[0].choices["experiment"].print_help()
            print("\nexperiments:")
        _list_experiments()
        return 0
    if args.list:
        _list_experiments()
        return 0
    name = recipes.canonical(args.name)
    exp_parser = _recipe_parser(f"jaxinterp experiment {name}", name)
    if args.help:
        exp_parser.print_help()
        return 0
    exp_args, extra = exp_parser.parse_known_args(rest)
    if extra:
        raise _unknown_flags(extra, exp_parser)
    return _run(name, exp_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; a jaxinterp error prints ``error: ...`` and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except JaxinterpError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (runs resume from their last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
