"""Indirect object identification: activation patching, attribution patching and the logit lens.

Trains a small transformer on synthetic IOI prompts (:mod:`jaxinterp.data.ioi`: "When
Mary and John went to the store, John gave a drink to" -> Mary) with
:func:`train_ioi_model`, or loads one with ``--checkpoint``, then writes to
``runs/<name>/``:

* ``resid_sweep.png``: residual-stream patching (layer x position, denoising the ABC
  corruption) beside its attribution-patching estimate, normalised (1 = clean behaviour);
* ``head_sweep.png``: the same for every head's output, and the direct path of every
  head to the logits (path patching); all denoising and normalised;
* ``logit_lens.png``: logit difference and P(IO) read from every layer's residual;
* ``dla.png``: direct logit attribution per head;
* ``metrics.json``, ``model.safetensors``.

    jaxinterp experiment ioi                   # ~1-2 minutes on 2 CPU cores
    JAXINTERP_FAST=1 jaxinterp experiment ioi  # a smaller, quicker run
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from jaxinterp.data.ioi import END_POS, ROLES, TEMPLATE, VOCAB, ioi_batch
from jaxinterp.errors import ConfigError
from jaxinterp.interp import (
    activation_patching,
    attribution_patching,
    compare_attribution,
    direct_logit_attribution,
    logit_diff,
    logit_lens,
    path_patching_sweep,
)
from jaxinterp.io.weights import load_weights, save_weights
from jaxinterp.models import HookedTransformer, TransformerConfig, init_transformer
from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.viz import heatmap, heatmaps, line_plot


def ioi_config(n_layers: int = 2, d_model: int = 64, n_heads: int = 4, **kw) -> TransformerConfig:
    """A small GPT-2-style model for the IOI vocabulary."""
    return TransformerConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_model // n_heads,
                             d_mlp=4 * d_model, d_vocab=len(VOCAB), n_ctx=len(TEMPLATE), **kw)


def ioi_loss(model: HookedTransformer, tokens: Int[Array, "n pos"], io: Int[Array, " n"]):
    """Cross-entropy of the IO name at the last position, and the accuracy."""
    logits = model(tokens)[:, -1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    loss = -jnp.take_along_axis(logp, io[:, None], -1).mean()
    return loss, {"accuracy": (logits.argmax(-1) == io).mean()}


def train_ioi_model(steps: int = 600, *, seed: int = 0, batch_size: int = 64, lr: float = 4e-3,
                    cfg: TransformerConfig | None = None, runs_dir: str | None = None,
                    name: str = "ioi_train", progress: bool = False) -> tuple[HookedTransformer, list[dict]]:
    """Trains a model on IOI prompts with :func:`jaxinterp.train.train`.

    Returns the model and the logged metrics. Without ``runs_dir`` the run's files go to
    a temporary folder.
    """
    from jaxinterp.train import TrainConfig, train

    cfg = cfg or ioi_config()
    model = init_transformer(cfg, jax.random.key(seed))
    pool = ioi_batch(batch_size * 64, seed=seed + 1)

    def batch_fn(step: int):
        i = (step % 64) * batch_size
        return pool.clean[i:i + batch_size], pool.io[i:i + batch_size]

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(steps=steps, seed=seed, log_every=max(1, steps // 20), name=name,
                             runs_dir=runs_dir or tmp, progress=progress)
        # the same loss function and optimizer objects on every call: `train` compiles its step
        # once per (loss, optimizer, model structure, shapes), not once per call
        result = train(_train_loss, model, _adam(lr), batch_fn, config)
    return result.params, list(result.metrics)


def _train_loss(params, batch, key):
    return ioi_loss(params, *batch)


@functools.cache
def _adam(lr: float):
    import optax

    return optax.adam(lr)


@dataclasses.dataclass(frozen=True)
class IOIConfig:
    """The IOI run. ``steps``/``layers``/``prompts`` of 0 mean the default (smaller when
    ``JAXINTERP_FAST=1``)."""

    name: str = flag("ioi", "run folder name under --runs-dir")
    runs_dir: str = flag("runs", "parent folder of all runs")
    steps: int = flag(0, "training steps (0: 1000, or 400 in fast mode)")
    layers: int = flag(0, "model layers (0: 3, or 2 in fast mode)")
    prompts: int = flag(0, "held-out prompts the sweeps average over (0: 64, or 16 in fast mode)")
    checkpoint: str = flag("", "weights (.safetensors/.npz) of a trained model with --layers layers; skips training")
    seed: int = flag(0, "seed for initialisation and prompts")
    fast: bool = flag(False, "smaller, quicker run (also JAXINTERP_FAST=1)")

    def __post_init__(self):
        check_config(self, non_negative=("steps", "layers", "prompts"))
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise ConfigError(f"--checkpoint {self.checkpoint!r}: no such file")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def run_ioi(config: IOIConfig) -> dict:
    """Trains (or loads) the model, runs the sweeps and lenses, writes ``runs/<name>/``."""
    fast = is_fast(config)
    args = dataclasses.replace(
        config,
        steps=config.steps or (400 if fast else 1000),
        layers=config.layers or (2 if fast else 3),
        prompts=config.prompts or (16 if fast else 64),
    )
    out = Path(args.runs_dir) / args.name
    out.mkdir(parents=True, exist_ok=True)
    cfg = ioi_config(n_layers=args.layers)

    t0 = time.perf_counter()
    if args.checkpoint:
        model = load_weights(args.checkpoint, init_transformer(cfg, jax.random.key(0)))
        train_log = []
    else:
        model, train_log = train_ioi_model(args.steps, seed=args.seed, cfg=cfg, runs_dir=str(out),
                                           name="train", progress=True)
        save_weights(out / "model.safetensors", model)
    t_train = time.perf_counter() - t0

    data = ioi_batch(args.prompts, seed=args.seed + 100)
    metric = logit_diff(data.io, data.s)  # logit(IO) - logit(S) at the last position
    loss, acc = ioi_loss(model, data.clean, data.io)
    print(f"held-out IOI: loss {float(loss):.3f}, accuracy {float(acc['accuracy']):.2%}")

    t0 = time.perf_counter()
    resid = activation_patching(model, data.clean, data.corrupted, metric, "resid_pre", pos_labels=ROLES)
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    resid_attr = attribution_patching(model, data.clean, data.corrupted, metric, "resid_pre", pos_labels=ROLES)
    t_attr = time.perf_counter() - t0
    heads = activation_patching(model, data.clean, data.corrupted, metric, "z", by=("layer", "head"))
    heads_attr = attribution_patching(model, data.clean, data.corrupted, metric, "z", by=("layer", "head"))
    direct = path_patching_sweep(model, data.clean, data.corrupted, metric, "logits")  # denoising
    print(f"clean logit diff {resid.attrs['clean']:.3f}, corrupted {resid.attrs['corrupted']:.3f}")

    heatmaps({"activation patching": resid.normalized(), "attribution patching": resid_attr.normalized()},
             out / "resid_sweep.png", suptitle="IOI: residual stream (denoising S2), normalised")
    heatmaps({"patch head output": heads.normalized(), "attribution estimate": heads_attr.normalized(),
              "direct path to logits": direct.normalized()},
             out / "head_sweep.png", shared_scale=False, suptitle="IOI: heads")

    lens = logit_lens(model, data.clean, pos=END_POS)
    idx = np.arange(args.prompts)
    values = np.asarray(lens.values)
    lens_ld = (values[:, idx, np.asarray(data.io)] - values[:, idx, np.asarray(data.s)]).mean(1)
    p_io = np.asarray(jax.nn.softmax(lens.values, -1))[:, idx, np.asarray(data.io)].mean(1)
    line_plot({"logit(IO) - logit(S)": lens_ld}, out / "logit_lens.png", xlabels=lens.labels["layer"],
              ylabel="logit difference", title="logit lens at the final position")
    line_plot({"P(IO)": p_io}, out / "logit_lens_prob.png", xlabels=lens.labels["layer"], ylabel="probability")
    dla = direct_logit_attribution(model, data.clean, data.io, data.s)
    heatmap(dla["heads"], out / "dla.png", title="direct logit attribution per head")

    stats = {name: compare_attribution(exact, est) for name, exact, est in
             (("resid_pre", resid, resid_attr), ("z", heads, heads_attr))}
    top = np.dstack(np.unravel_index(np.argsort(-np.abs(np.asarray(heads.normalized())).ravel())[:3], heads.shape))[0]
    metrics = {
        "accuracy": float(acc["accuracy"]), "loss": float(loss),
        "clean_logit_diff": resid.attrs["clean"], "corrupted_logit_diff": resid.attrs["corrupted"],
        "resid_sweep_normalized": np.asarray(resid.normalized()).round(4).tolist(),
        "attribution_vs_exact": stats, "top_heads_by_patching": top.tolist(),
        "logit_lens_logit_diff": lens_ld.round(4).tolist(), "logit_lens_p_io": p_io.round(4).tolist(),
        "dla_heads": np.asarray(dla["heads"]).round(4).tolist(),
        "seconds": {"train": t_train, "resid_sweep": t_sweep, "resid_attribution": t_attr},
        "train_log_last": train_log[-1] if train_log else None, "config": cfg.to_dict(), "fast": fast,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    print(f"attribution vs exact: resid r={stats['resid_pre']['pearson']:.3f}, heads r={stats['z']['pearson']:.3f}")
    return {k: v for k, v in metrics.items() if k in ("accuracy", "loss", "clean_logit_diff", "corrupted_logit_diff")}


