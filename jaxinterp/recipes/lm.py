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
import math
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
from jaxinterp.recipes import available_memory, check_config, flag
from jaxinterp.train import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A small-LM training run. Every field is a CLI flag (``--d-model 256``)."""

    name: str = flag("lm", "run folder name under --runs-dir")
    runs_dir: str = flag("runs", "parent folder of all runs")
    # data
    corpus: str = flag("default", "'default' (embedded corpus), comma-separated .txt paths, or tfds:NAME")
    tfds_data_dir: str = flag("", "data_dir of a prepared tfds dataset (with --corpus tfds:NAME)")
    tokenizer: str = flag("bpe", "'bpe' (trained on the corpus, cached), 'bytes', or a tokenizer.json path")
    vocab_size: int = flag(4096, "BPE vocabulary size (with --tokenizer bpe)")
    seq_len: int = flag(128, "tokens per training sequence (also the model's n_ctx)")
    batch_size: int = flag(16, "sequences per step")
    val_fraction: float = flag(0.02, "fraction of the corpus held out for eval, in (0, 0.5]")
    loader: str = flag("numpy", "training batches: 'numpy' (TokenWindows) or 'grain' (a grain "
                                "pipeline sharded per process; pip install 'jaxinterp[grain]')")
    # model
    n_layers: int = flag(2, "transformer layers (0: embed then unembed)")
    d_model: int = flag(128, "residual stream width")
    n_heads: int = flag(4, "attention heads (must divide d_model)")
    d_mlp: int = flag(512, "MLP width")
    attn_only: bool = flag(False, "attention-only model (no MLPs)")
    positional_embedding_type: str = flag("standard", "'standard' (learned), 'rotary' or 'none'")
    # optimisation
    steps: int = flag(800, "optimiser updates (a rerun with more steps extends the run)")
    lr: float = flag(3e-3, "peak learning rate (AdamW, warm-up then cosine decay)")
    warmup: int = flag(50, "warm-up steps")
    weight_decay: float = flag(0.05, "AdamW weight decay")
    seed: int = flag(0, "seed for initialisation and data order")
    log_every: int = flag(20, "log loss every this many steps")
    eval_every: int = flag(200, "evaluate every this many steps (0: only at the end)")
    checkpoint_every: int = flag(200, "checkpoint every this many steps (0: never; no resume)")
    progress: bool = flag(True, "show a progress bar")

    def __post_init__(self):
        check_config(self, positive=("vocab_size", "seq_len", "batch_size", "d_model", "n_heads",
                                     "d_mlp", "steps", "log_every"),
                     non_negative=("n_layers", "warmup", "eval_every", "checkpoint_every"))
        if not 0 < self.val_fraction <= 0.5:
            raise ConfigError(f"--val-fraction must be in (0, 0.5], got {self.val_fraction}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"--n-heads ({self.n_heads}) must divide --d-model ({self.d_model})")
        if self.positional_embedding_type not in ("standard", "rotary", "none"):
            raise ConfigError("--positional-embedding-type must be 'standard', 'rotary' or 'none', "
                              f"got {self.positional_embedding_type!r}")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise ConfigError(f"--vocab-size must be at least 257 for a byte-level BPE, got {self.vocab_size}")
        check_memory(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def check_memory(cfg: LMConfig) -> None:
    """Refuses a run whose training step cannot fit in this machine's memory (a rough,
    generous estimate of the float32 activations the forward and backward keep)."""
    b, p, L = cfg.batch_size, cfg.seq_len, max(cfg.n_layers, 1)
    per_layer = cfg.n_heads * p * p * 3 + p * (12 * cfg.d_model + (0 if cfg.attn_only else 3 * cfg.d_mlp))
    need = 4 * b * (L * per_layer + 3 * p * cfg.vocab_size)
    have = available_memory()
    if have and need > have:
        raise ConfigError(f"--seq-len {cfg.seq_len} with --batch-size {cfg.batch_size} needs about "
                          f"{need / 2**30:,.0f} GiB of activations per step; this machine has "
                          f"{have / 2**30:,.0f} GiB. Use a shorter --seq-len or smaller --batch-size.")


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
    if cfg.loader not in ("numpy", "grain"):
        raise ConfigError(f"loader must be 'numpy' or 'grain', got {cfg.loader!r}")
    tokenizer, tokens, train_tokens, val_tokens = corpus_splits(cfg)
    if cfg.loader == "grain":
        from jaxinterp.data.grain_source import GrainWindows

        batches = GrainWindows(train_tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed).batch_fn()
    else:
        batches = TokenWindows(train_tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed).batch
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
        loss_fn, model, optimizer, lambda step: jnp.asarray(batches(step)),
        TrainConfig(steps=cfg.steps, seed=cfg.seed, log_every=cfg.log_every,
                    eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
                    name=cfg.name, runs_dir=cfg.runs_dir, progress=cfg.progress),
        eval_fn=jax.jit(eval_fn),
        state_fingerprint={"lm": _fingerprint(cfg)},
    )
    model = result.params
    run_dir = cfg.run_dir
    if result.resumed_from == cfg.steps and (run_dir / "model" / "model.safetensors").is_file():
        done = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
        if done.get("steps") == cfg.steps:   # a finished run: its model and report are written already
            return done
    save_model(run_dir / "model", model, tokenizer)
    summary = write_report(cfg, model, tokenizer, result.metrics, run_dir,
                           seconds=time.perf_counter() - start, tokens=tokens)
    return summary


# Fields that do not change what is trained: a run may be extended (more steps), renamed
# or re-logged and still resume from its checkpoints.
_NOT_IN_FINGERPRINT = ("name", "runs_dir", "steps", "log_every", "eval_every", "checkpoint_every", "progress")


def _fingerprint(cfg: LMConfig) -> dict:
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    if out["loader"] == "numpy":  # runs from before the loader existed still resume
        del out["loader"]
    return out


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
