"""The ``jaxinterp`` command.

    jaxinterp demo                      the main job: a one-layer LM, then SAEs on its MLP
    jaxinterp train --n-layers 4 ...    train a language model (any field overridden)
    jaxinterp train-sae --model M --site S   an SAE on any loadable model's hook site
    jaxinterp eval-sae --sae F --model M     evaluate an SAE file on a model
    jaxinterp experiment --list         the reproductions available
    jaxinterp experiment NAME --help    one reproduction and its settings

Every recipe is configured by a frozen dataclass; each field is a flag
(``d_model`` -> ``--d-model``), with the dataclass default shown in ``--help``.
``--config file.json`` loads several fields at once (flags still win).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from jaxinterp import recipes

DEMO_DEFAULTS = {"name": "demo"}


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    t = hints.get(field.name, str)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args and typing.get_origin(t) is not None else t


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, defaults: dict | None = None) -> None:
    """One ``--flag`` per dataclass field, typed and defaulted from the dataclass."""
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
            parser.add_argument(flag, type=t, default=None, metavar=t.__name__.upper(), help=text)


def build_config(cls: type, args: argparse.Namespace, defaults: dict | None = None):
    values = dict(defaults or {})
    if getattr(args, "config", None):
        with open(args.config) as fh:
            values.update(json.load(fh))
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise SystemExit(f"jaxinterp: unknown settings for {cls.__name__}: {sorted(unknown)}")
    return cls(**values)


def _run(name: str, args: argparse.Namespace, defaults: dict | None = None) -> int:
    cls, run = recipes.get(name)
    cfg = build_config(cls, args, defaults)
    summary = run(cfg)
    run_dir = getattr(cfg, "run_dir", None)
    if isinstance(summary, dict):
        shown = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
        print(json.dumps(shown, indent=2))
    if run_dir is not None:
        print(f"wrote {run_dir}/")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxinterp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    lm_cls, _ = recipes.get("train-lm")
    demo = sub.add_parser("demo", help="the main job (towards monosemanticity): a one-layer LM on "
                          "the embedded corpus, SAEs of several widths on its MLP, runs/demo/")
    add_dataclass_args(demo, recipes.get("monosemanticity")[0], DEMO_DEFAULTS)
    train = sub.add_parser("train", help="train a transformer LM (any LMConfig field as a flag)")
    add_dataclass_args(train, lm_cls)
    for name, text in (("train-sae", "train an SAE on a model's hook site (mesh, multi-host flags)"),
                       ("eval-sae", "evaluate an SAE file (SAELens, Gemma Scope, sparsify) on a model")):
        add_dataclass_args(sub.add_parser(name, help=text), recipes.get(name)[0])
    exp = sub.add_parser("experiment", help="run a reproduction from experiments/ by name",
                         add_help=False)
    exp.add_argument("name", nargs="?", help="experiment name (see --list)")
    exp.add_argument("--list", action="store_true", help="list the experiments")
    exp.add_argument("-h", "--help", action="store_true", help="help for the experiment")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("demo", "train", "train-sae", "eval-sae"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "demo":
            return _run("monosemanticity", args, DEMO_DEFAULTS)
        return _run("train-lm" if args.command == "train" else args.command, args)
    if args.list or not args.name:
        width = max(len(n) for n in recipes.RECIPES)
        for name, (_, _, _, doc) in sorted(recipes.RECIPES.items()):
            print(f"{name:<{width}}  {doc}")
        return 0
    cls, _ = recipes.get(args.name)
    exp_parser = argparse.ArgumentParser(prog=f"jaxinterp experiment {args.name}",
                                         description=recipes.RECIPES[args.name][3])
    add_dataclass_args(exp_parser, cls)
    if args.help:
        exp_parser.print_help()
        return 0
    return _run(args.name, exp_parser.parse_args(rest))


if __name__ == "__main__":
    raise SystemExit(main())
