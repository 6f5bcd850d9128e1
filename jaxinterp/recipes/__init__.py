"""Recipes: whole runs (train a model, reproduce a paper's result) as library functions.

Each recipe is a config dataclass plus a ``run(config)`` function writing to
``runs/<name>/``. The CLI (``jaxinterp experiment NAME --field value``), the scripts in
``experiments/`` and the notebooks call these; they hold no logic of their own.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from typing import Any

# name -> (module, config class, run function, one-line description)
RECIPES: dict[str, tuple[str, str, str, str]] = {
    "train-lm": ("jaxinterp.recipes.lm", "LMConfig", "train_lm",
                 "train a small transformer on the embedded corpus and write its report"),
    "ioi": ("jaxinterp.recipes.ioi", "IOIConfig", "run_ioi",
            "indirect object identification: patching sweeps, attribution patching, logit lens"),
    "monosemanticity": ("jaxinterp.recipes.monosemanticity", "MonosemanticityConfig", "run_monosemanticity",
                        "the main job: a one-layer LM, then SAEs of several widths on its MLP neurons"),
    "sae-ground-truth": ("jaxinterp.recipes.sae_ground_truth", "SAEGroundTruthConfig", "run_sae_ground_truth",
                         "every SAE architecture against a known dictionary in superposition (MMCS)"),
    "train-sae": ("jaxinterp.recipes.train_sae", "TrainSAERecipe", "run_train_sae",
                  "train an SAE on any loadable model's hook site (also: jaxinterp train-sae)"),
    "eval-sae": ("jaxinterp.recipes.train_sae", "EvalSAERecipe", "run_eval_sae",
                 "evaluate an SAE file (SAELens, Gemma Scope, sparsify) on a model"),
    "conv_circuits": ("jaxinterp.recipes.conv_circuits", "ConvCircuitsConfig", "run_conv_circuits",
                      "conv net on rendered shapes: measured edge/curve units, visualisations, weight circuits"),
    "text_featurevis": ("jaxinterp.recipes.text_featurevis", "TextFeatureVisConfig", "run_text_featurevis",
                        "LM neurons visualised by soft prompts and token search, against their top contexts"),
    "superposition": ("jaxinterp.recipes.superposition", "SuperpositionConfig", "run_superposition",
                      "toy models of superposition: intro figure, basic results, pentagon, dimensionality, phase diagram"),
    "double_descent": ("jaxinterp.recipes.double_descent", "DoubleDescentConfig", "run_double_descent",
                       "superposition, memorisation and double descent: test loss against training-set size"),
}


def flag(default: Any, help: str) -> Any:
    """A recipe config field with its one-line ``--help`` text::

        steps: int = flag(800, "optimiser updates (0: the recipe's default)")
    """
    return dataclasses.field(default=default, metadata={"help": help})


def check_config(config: Any, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Raises ``ConfigError`` naming the flag when a size is not a positive (or non-negative) int."""
    from jaxinterp.errors import ConfigError

    for names, low, what in ((positive, 1, "a positive int"), (non_negative, 0, "an int >= 0")):
        for name in names:
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")


def available_memory() -> int | None:
    """Bytes of memory a run can use: the accelerator's, else the machine's RAM (None if unknown)."""
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - no device stats on CPU
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def is_fast(config: Any) -> bool:
    """Whether a run should use its reduced CI sizes: ``config.fast`` or ``JAXINTERP_FAST=1``."""
    return bool(getattr(config, "fast", False)) or os.environ.get("JAXINTERP_FAST") == "1"


def register(name: str, module: str, config: str, run: str, doc: str) -> None:
    RECIPES[name] = (module, config, run, doc)


def get(name: str) -> tuple[type, Callable]:
    """The config class and run function of a recipe."""
    if name not in RECIPES:
        from jaxinterp.errors import ConfigError, unknown_name_message

        raise ConfigError(unknown_name_message("experiment", name, RECIPES)
                          + f" Experiments: {', '.join(sorted(RECIPES))}.")
    module, config, run, _ = RECIPES[name]
    mod = importlib.import_module(module)
    cls = getattr(mod, config)
    assert dataclasses.is_dataclass(cls)
    return cls, getattr(mod, run)
