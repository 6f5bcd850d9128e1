"""Train a small transformer language model on the embedded corpus, and write its report.

The pipeline: corpus (``jaxinterp.data.load_corpus``, or local text files, or a TFDS
dataset) -> tokenizer (byte-level BPE trained on the corpus and cached, or any local
``tokenizer.json``) -> shuffled fixed-length windows, resumable by step -> a
``HookedTransformer`` trained by the generic loop (checkpoints, exact resume, NaN guard)
-> ``runs/<name>/``: ``config.json``, ``metrics.json``, ``loss.png``, the weights as
safetensors with the model config and tokenizer beside them, sample generations and an
attention-pattern page in ``report.md`` / ``attention.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.data import (
    ByteTokenizer,
    TokenWindows,
    default_tokenizer,
    load_corpus,
    load_text_files,
    load_tokenizer,
    tokenize_corpus,
)
from jaxinterp.errors import ConfigError
from jaxinterp.hooks import run_with_cache
from jaxinterp.io.weights import save_weights
from jaxinterp.models import HookedTransformer, TransformerConfig, init_transformer
from jaxinterp.models.loss import lm_loss
from jaxinterp.train import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A small-LM training run. Every field is a CLI flag (``--d-model 256``)."""

    name: str = "lm"
    runs_dir: str = "runs"
    # data
    corpus: str = "default"  # "default", a path to .txt files (comma separated), or tfds:NAME
    tfds_data_dir: str = ""
    tokenizer: str = "bpe"  # "bpe" (trained on the corpus, cached), "bytes", or a local path
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16
    val_fraction: float = 0.02
    # model
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    attn_only: bool = False
    positional_embedding_type: str = "standard"
    # optimisation
    steps: int = 800
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.05
    seed: int = 0
    log_every: int = 20
    eval_every: int = 200
    checkpoint_every: int = 200
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _documents(cfg: LMConfig) -> list[str]:
    if cfg.corpus == "default":
        return load_corpus("default")
    if cfg.corpus.startswith("tfds:"):
        from jaxinterp.data.tfds_source import open_tfds

        return list(open_tfds(cfg.corpus[5:], data_dir=cfg.tfds_data_dir or None))
    return load_text_files([p for p in cfg.corpus.split(",") if p])


def _tokenizer(cfg: LMConfig):
    if cfg.tokenizer == "bpe":
        if cfg.corpus != "default":
            raise ConfigError("tokenizer='bpe' is trained on the default corpus; pass a tokenizer path")
        return default_tokenizer(cfg.vocab_size)
    if cfg.tokenizer == "bytes":
        return ByteTokenizer()
    return load_tokenizer(cfg.tokenizer)


def model_config(cfg: LMConfig, d_vocab: int) -> TransformerConfig:
    return TransformerConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads, d_mlp=None if cfg.attn_only else cfg.d_mlp,
        d_vocab=d_vocab, n_ctx=cfg.seq_len, attn_only=cfg.attn_only,
        positional_embedding_type=cfg.positional_embedding_type, model_name=cfg.name,
    )


def corpus_splits(cfg: LMConfig):
    """``(tokenizer, tokens, train_tokens, val_tokens)``: the corpus tokenized (cached) and
    split, the last ``val_fraction`` (at least one batch) held out."""
    tokenizer = _tokenizer(cfg)
    tokens = tokenize_corpus(_documents(cfg), tokenizer)
    n_val = max(int(len(tokens) * cfg.val_fraction), cfg.seq_len * cfg.batch_size)
    return tokenizer, tokens, tokens[:-n_val], tokens[-n_val:]


def train_lm(cfg: LMConfig) -> dict:
    """Runs the whole pipeline; returns the summary also written to ``report.json``."""
    tokenizer, tokens, train_tokens, val_tokens = corpus_splits(cfg)
    train_windows = TokenWindows(train_tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed)
    val_windows = TokenWindows(val_tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed, shuffle=False)
    mcfg = model_config(cfg, tokenizer.vocab_size)
    model = init_transformer(mcfg, jax.random.key(cfg.seed))

    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay))

    def loss_fn(m: HookedTransformer, batch, key):
        return lm_loss(m, batch), {}

    def eval_fn(m: HookedTransformer, _):
        return jnp.mean(jnp.stack([lm_loss(m, jnp.asarray(val_windows.batch(i))) for i in range(4)]))

    start = time.perf_counter()
    result = train(
        loss_fn, model, optimizer, lambda step: jnp.asarray(train_windows.batch(step)),
        TrainConfig(steps=cfg.steps, seed=cfg.seed, log_every=cfg.log_every,
                    eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
                    name=cfg.name, runs_dir=cfg.runs_dir, progress=cfg.progress),
        eval_fn=jax.jit(eval_fn),
        state_fingerprint={"lm": _fingerprint(cfg)},
    )
    model = result.params
    run_dir = cfg.run_dir
    save_model(run_dir / "model", model, tokenizer)
    summary = write_report(cfg, model, tokenizer, result.metrics, run_dir,
                           seconds=time.perf_counter() - start, tokens=tokens)
    return summary


# Fields that do not change what is trained: a run may be extended (more steps), renamed
# or re-logged and still resume from its checkpoints.
_NOT_IN_FINGERPRINT = ("name", "runs_dir", "steps", "log_every", "eval_every", "checkpoint_every", "progress")


def _fingerprint(cfg: LMConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}


def save_model(folder: Path, model: HookedTransformer, tokenizer) -> None:
    """Weights (safetensors), model config and tokenizer, reloadable with :func:`load_model`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", model)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    if hasattr(tokenizer, "save"):
        tokenizer.save(folder)


def load_model(folder: str | Path) -> HookedTransformer:
    """Loads a model saved by :func:`save_model` (safetensors, no pickle)."""
    from jaxinterp.io.weights import load_weights

    folder = Path(folder)
    mcfg = TransformerConfig.from_dict(json.loads((folder / "config.json").read_text()))
    template = init_transformer(mcfg, jax.random.key(0))
    return load_weights(folder / "model.safetensors", template)


def write_report(cfg: LMConfig, model, tokenizer, metrics, run_dir: Path, seconds: float,
                 tokens: np.ndarray) -> dict:
    from jaxinterp.viz.report import attention_png, loss_curve_png, sample_text

    losses = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    loss_curve_png(losses, evals, run_dir / "loss.png", title=f"{cfg.name}: next-token loss")
    prompt = "In the beginning"
    samples = sample_text(model, tokenizer, [prompt, "def __init__(self"], max_new_tokens=40)
    probe = "The LORD said to Moses, The LORD said to Moses,"
    ids = jnp.asarray([tokenizer.encode(probe)[: cfg.seq_len]])
    _, cache = run_with_cache(model, ids, names="blocks.*.attn.hook_pattern")
    patterns = np.asarray(cache.stacked("blocks.*.attn.hook_pattern"))[:, 0]  # [layer, head, q, k]
    labels = [tokenizer.decode([int(t)]) for t in ids[0]]
    attention_png(patterns, labels, run_dir / "attention.png")
    summary = {
        "final_loss": losses[-1][1] if losses else None,
        "final_eval_loss": evals[-1][1] if evals else None,
        "unigram_entropy_nats": _unigram_entropy(tokens, tokenizer.vocab_size),
        "steps": cfg.steps, "train_seconds": round(seconds, 1), "corpus_tokens": int(len(tokens)),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len, "samples": samples,
    }
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# {cfg.name}", "", f"Model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
             f"vocab {model.cfg.d_vocab}; {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens.", "",
             f"- final train loss: {summary['final_loss']:.3f}", f"- final eval loss: {summary['final_eval_loss']:.3f}",
             f"- unigram entropy of the corpus (a model with no context): {summary['unigram_entropy_nats']:.3f} nats",
             f"- wall time: {summary['train_seconds']} s", "", "![loss](loss.png)", "", "## Samples", ""]
    lines += [f"```\n{s}\n```" for s in samples]
    lines += ["", "## Attention patterns", "", f"Prompt: `{probe}`", "", "![attention](attention.png)"]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def _unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy of the corpus's token frequencies: the loss of a model with no context."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
