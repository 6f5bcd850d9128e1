"""``jaxinterp browse RUN_DIR``: analyse every feature of a run's SAEs and write a browser.

    jaxinterp browse runs/demo                    every SAE of the main job
    jaxinterp browse runs/my-sae --tokens 262144  a train-sae run, more tokens

For each SAE found in the run folder (``saes/<name>/`` of the main job, ``sae/`` of a
``jaxinterp train-sae`` run, or an SAELens folder itself) it streams held-out tokens
through the model (the run's saved evaluation tokens, else the tail of the embedded
corpus), runs :func:`jaxinterp.features.analyze_features`, and writes to
``<out>/<name>/``: the analysis (``analysis.npz``/``.json``), the static browser
(``index.html`` + ``data/``; open it from disk), a Neuronpedia export (``neuronpedia/``)
and, when chromium is installed, screenshots of the index and of one feature.
``<out>/index.html`` links the SAEs' browsers.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.errors import CheckpointError, ConfigError
from jaxinterp.recipes import check_config, flag
from jaxinterp.train.runlog import write_json_atomic


@dataclasses.dataclass(frozen=True)
class BrowseConfig:
    """Feature analysis and browser for a run's SAEs. Every field is a flag."""

    run: str = flag("", "run folder (jaxinterp demo / train-sae output, or an SAELens folder)", positional=True)
    sae: str = flag("", "only this SAE of the run (e.g. 16x); default: every SAE")
    model: str = flag("", "the model (default: the run's lm/model, or the SAE's model_name)")
    out: str = flag("", "output folder (default: RUN/browser)")
    tokens: int = flag(65536, "tokens to analyse (at most the run's saved evaluation tokens)")
    seq_len: int = flag(128, "sequence length when tokens come from the corpus")
    batch_size: int = flag(32, "sequences per chunk of the streamed pass")
    k: int = flag(16, "top-activating contexts kept per feature")
    passages: int = flag(64, "corpus passages for the browser's text box")
    skip_first: int = flag(0, "positions left out at the start of every sequence (e.g. a BOS)")
    neuronpedia: bool = flag(True, "also export Neuronpedia's feature-upload JSON")
    screenshots: bool = flag(True, "PNG screenshots of the index and one feature page (needs chromium)")
    progress: bool = flag(True, "progress bar")

    def __post_init__(self) -> None:
        check_config(self, positive=("tokens", "seq_len", "batch_size", "k", "passages"),
                     non_negative=("skip_first",))

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "browser"


def find_saes(run: Path) -> dict[str, Path]:
    """The SAE folders of a run, by name (errors when there is none)."""
    if not run.is_dir():
        raise ConfigError(f"Run folder {run} does not exist.")
    if (run / "cfg.json").is_file():
        return {run.name: run}
    found = {p.parent.name: p.parent for p in sorted((run / "saes").glob("*/cfg.json"))}
    if (run / "sae" / "cfg.json").is_file():
        found["sae"] = run / "sae"
    if not found:
        raise CheckpointError(f"{run} holds no SAE: expected saes/<name>/cfg.json (jaxinterp demo), "
                              "sae/cfg.json (jaxinterp train-sae) or an SAELens folder (cfg.json + "
                              "sae_weights.safetensors).")
    return dict(sorted(found.items(), key=lambda kv: json.loads((kv[1] / "cfg.json").read_text()).get("d_sae", 0)))


def _model_spec(c: BrowseConfig, run: Path, sae_folder: Path) -> str:
    if c.model:
        return c.model
    if (run / "lm" / "model" / "config.json").is_file():
        return str(run / "lm" / "model")
    meta = json.loads((sae_folder / "cfg.json").read_text()).get("metadata") or {}
    spec = meta.get("model_name") or ""
    if spec and (Path(spec).exists() or spec.startswith("hf:")):
        return spec
    raise ConfigError(f"Cannot tell which model {sae_folder} belongs to (model_name {spec!r}); pass --model.")


def _model_id(run: Path, spec: str) -> str:
    name = Path(spec).stem
    return f"{run.name}-lm" if name == "model" else name


def _tokens(c: BrowseConfig, run: Path, tokenizer: Any, n_ctx: int) -> np.ndarray:
    saved = run / "saes" / "eval_tokens.npy"
    if saved.is_file():
        windows = np.load(saved, allow_pickle=False)
        return windows[:max(c.tokens // windows.shape[1], 1)]
    from jaxinterp.recipes.train_sae import token_stream

    seq_len = min(c.seq_len, n_ctx)
    stream = token_stream("default", tokenizer)
    n = max(c.tokens // seq_len, 1)
    tail = np.asarray(stream[-n * seq_len:], np.int32)
    return tail[: len(tail) // seq_len * seq_len].reshape(-1, seq_len)


def browse_sae(model: Any, sae: Any, tokens: np.ndarray, decode: Any, out: Path, *, title: str, k: int = 16,
               passages: int = 64, batch_size: int = 32, skip_first: int = 0, neuronpedia: str | None = None,
               browser: bool = True, screenshots: bool = True, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Analysis (saved), browser, Neuronpedia export and screenshots of one SAE into
    ``out``; returns the :class:`~jaxinterp.features.FeatureAnalysis` and a summary."""
    from jaxinterp.features.analysis import AnalysisSettings, analyze_features
    from jaxinterp.features.search import passage_features
    from jaxinterp.viz.browser import write_browser

    analysis = analyze_features(model, sae, tokens, batch_size=batch_size, progress=progress,
                                settings=AnalysisSettings(k=k, skip_first=skip_first))
    analysis.save(out)
    summary = {"d_sae": analysis.d_sae, "alive": int((analysis.density > 0).sum()), "n_tokens": analysis.n_tokens,
               "analysis_seconds": analysis.meta["seconds"], "tokens_per_second": analysis.meta["tokens_per_second"],
               "tokens_truncated": analysis.meta["tokens_truncated"]}
    if not browser:
        return analysis, summary
    index = write_browser(analysis, out, decode, passages=passage_features(model, sae, tokens[:passages]),
                          title=title)
    summary["browser"] = str(index)
    if neuronpedia is not None:
        from jaxinterp.features.neuronpedia import export_neuronpedia

        summary["neuronpedia"] = str(export_neuronpedia(analysis, out / "neuronpedia", decode, model_id=neuronpedia,
                                                        sae_set="jaxinterp", n_tokens_in_prompt=tokens.shape[1]))
    if screenshots:
        from jaxinterp.viz.browser_shots import screenshot_browser

        alive = np.flatnonzero((analysis.density > 1e-3) & (analysis.density < 0.05))
        feature = int(alive[0]) if len(alive) else int(np.argmax(analysis.density))
        summary["screenshots"] = screenshot_browser(index, out, feature)
    return analysis, summary


def write_landing(out: Path, names: list[str], summaries: dict[str, dict], title: str) -> Path:
    """``out/index.html``: a link to each SAE's browser (``out/<name>/index.html``)."""
    rows = "".join(f'<li><a href="{html.escape(n)}/index.html">{html.escape(n)}</a>: {summaries[n]["d_sae"]} '
                   f'features, {summaries[n]["alive"]} alive</li>' for n in names)
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f'<body style="font-family:sans-serif"><h1>{html.escape(title)}</h1><ul>{rows}</ul></body></html>')
    (out / "index.html").write_text(page)
    return out / "index.html"


def run_browse(c: BrowseConfig) -> dict:
    """Analyses each SAE of the run and writes its browser; returns a summary per SAE."""
    from jaxinterp.recipes.train_sae import load_model_and_tokenizer
    from jaxinterp.sae.formats import load_saelens

    if not c.run:
        raise ConfigError("Which run? jaxinterp browse RUN_DIR (a jaxinterp demo or train-sae run folder).")
    run = Path(c.run)
    saes = find_saes(run)
    if c.sae:
        if c.sae not in saes:
            raise ConfigError(f"No SAE {c.sae!r} in {run}; it has {', '.join(saes)}.")
        saes = {c.sae: saes[c.sae]}
    start = time.perf_counter()
    out = c.run_dir
    out.mkdir(parents=True, exist_ok=True)
    summaries, cache = {}, {}
    for name, folder in saes.items():
        spec = _model_spec(c, run, folder)
        if spec not in cache:
            cache[spec] = load_model_and_tokenizer(spec)
        model, tokenizer = cache[spec]
        tokens = _tokens(c, run, tokenizer, model.cfg.n_ctx)
        _, summaries[name] = browse_sae(
            model, load_saelens(folder), tokens, lambda i, t=tokenizer: t.decode([int(i)]), out / name,
            title=f"{run.name} / {name}", k=c.k, passages=c.passages, batch_size=c.batch_size,
            skip_first=c.skip_first, neuronpedia=_model_id(run, spec) if c.neuronpedia else None,
            screenshots=c.screenshots, progress=c.progress)
    landing = write_landing(out, list(saes), summaries, f"{run.name}: feature browsers")
    result = {"run": str(run), "browser": str(landing), "saes": summaries,
              "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomic(out / "results.json", result)
    return result
