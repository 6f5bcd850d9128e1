"""Attention-only models on the embedded corpus, shared by the framework and induction runs.

Windows of the BPE-tokenised corpus (``jaxinterp.data``), trained by the generic loop
(``jaxinterp.train.train``: checkpoints, exact resume, NaN guard). Two optional kinds of
repeats are written into each batch (:func:`repeat_beginnings`):

* ``repeat_fraction`` of the windows repeat their own beginning: the first ``n`` tokens
  (``n`` in ``[seq_len/4, seq_len/2]`` per window) follow again right after themselves.
  That is real text seen twice, where induction heads pay off.
* ``random_fraction`` of the windows hold a segment of ``n`` uniformly random tokens twice,
  at random places (the rest of the window stays text). This is the repeated-random-token
  setting in which induction heads are usually studied; since the length and the distance
  of the copies vary, only a real induction mechanism (a previous-token head composed with
  a prefix-matching head) predicts the second copy. On a CPU it is what brings the phase
  change within a few thousand steps: with text repeats alone a 2-layer model had not
  formed induction heads after 4,000 steps of 32 x 32 tokens.

Short windows help too: before a head has learned where to look, its attention is spread
over every earlier position, so the signal that teaches it is diluted by the context
length. Batches are a pure function of the step, so runs resume exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.data import TokenWindows, default_tokenizer, load_corpus, tokenize_corpus
from jaxinterp.models import HookedTransformer, attn_only_config, init_transformer, lm_loss
from jaxinterp.recipes import flag
from jaxinterp.train import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class AttnOnlyRunConfig:
    """The settings the framework and induction runs share: the run folder, the corpus
    tokenizer and the attention-only model's size and training batch."""

    name: str = flag("attn_only", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of all runs")
    seed: int = flag(0, "seed of the models and the data order")
    fast: bool = flag(False, "tiny sizes for CI (also JAXINTERP_FAST=1)")
    vocab_size: int = flag(1024, "size of the BPE vocabulary trained on the corpus")
    d_model: int = flag(128, "residual stream width")
    n_heads: int = flag(8, "heads per layer")
    seq_len: int = flag(32, "tokens per training window (short windows speed up induction)")
    batch_size: int = flag(32, "windows per step")
    lr: float = flag(3e-3, "Adam learning rate (after a linear warm-up)")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


@dataclasses.dataclass(frozen=True)
class CorpusData:
    """The tokenised corpus split into training and held-out tokens."""

    tokenizer: object
    train: np.ndarray
    val: np.ndarray

    @property
    def d_vocab(self) -> int:
        return self.tokenizer.vocab_size


def corpus_data(vocab_size: int, val_fraction: float = 0.02) -> CorpusData:
    tokenizer = default_tokenizer(vocab_size)
    tokens = np.asarray(tokenize_corpus(load_corpus("default"), tokenizer))
    n_val = max(int(len(tokens) * val_fraction), 4096)
    return CorpusData(tokenizer, tokens[:-n_val], tokens[-n_val:])


def repeat_beginnings(batch: np.ndarray, fraction: float, seed, random_fraction: float = 0.0,
                      d_vocab: int = 0) -> np.ndarray:
    """``batch`` with repeats written into some of its windows.

    The first ``round(fraction * batch)`` windows repeat their own first ``n`` tokens at
    ``n:2n`` (``n`` uniform in ``[seq_len/4, seq_len/2]``). The next ``round(random_fraction *
    batch)`` windows get ``n`` tokens drawn uniformly from ``[0, d_vocab)`` (``n`` uniform in
    ``[4, seq_len/2]``) written twice at random places, the second copy anywhere after the
    first, so neither the length nor the distance between the copies can be memorised; the
    rest of those windows stays text. All draws come from ``seed``: a batch is a pure
    function of it.
    """
    batch = np.array(batch)
    length = batch.shape[1]
    rows = int(round(fraction * len(batch)))
    rng = np.random.default_rng(seed)
    for row, n in enumerate(rng.integers(max(1, length // 4), length // 2 + 1, rows)):
        batch[row, n:2 * n] = batch[row, :n]
    randoms = min(int(round(random_fraction * len(batch))), len(batch) - rows)
    for row in range(rows, rows + randoms):
        n = int(rng.integers(min(4, length // 2), length // 2 + 1))
        first = int(rng.integers(0, length - 2 * n + 1))
        second = int(rng.integers(first + n, length - n + 1))
        batch[row, first:first + n] = batch[row, second:second + n] = rng.integers(0, d_vocab, n)
    return batch


@dataclasses.dataclass(frozen=True)
class AttnOnlySpec:
    """What to train: the model's shape and the schedule."""

    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    seed: int = 0
    repeat_fraction: float = 0.0
    warmup: int = 50
    random_fraction: float = 0.0


def model_config(spec: AttnOnlySpec, d_vocab: int):
    return attn_only_config(n_layers=spec.n_layers, d_model=spec.d_model, n_heads=spec.n_heads,
                            d_vocab=d_vocab, n_ctx=spec.seq_len)


def optimizer(spec: AttnOnlySpec) -> optax.GradientTransformation:
    schedule = optax.linear_schedule(0.0, spec.lr, spec.warmup)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def train_attn_only(spec: AttnOnlySpec, data: CorpusData, runs_dir: str | Path, name: str, *,
                    checkpoint_every: int = 0, keep_checkpoints: int = 3,
                    progress: bool = True) -> tuple[HookedTransformer, list[dict]]:
    """Trains (or resumes) one model; returns it and the logged metrics."""
    windows = TokenWindows(data.train, spec.seq_len, spec.batch_size, seed=spec.seed)
    model = init_transformer(model_config(spec, data.d_vocab), jax.random.key(spec.seed))

    def batch_fn(step: int):
        batch = repeat_beginnings(windows.batch(step), spec.repeat_fraction, (spec.seed, step),
                                  spec.random_fraction, data.d_vocab)
        return jnp.asarray(batch)

    def loss_fn(m, tokens, key):
        return lm_loss(m, tokens), {}

    config = TrainConfig(steps=spec.steps, seed=spec.seed, log_every=max(1, spec.steps // 50), name=name,
                         runs_dir=str(runs_dir), checkpoint_every=checkpoint_every,
                         keep_checkpoints=keep_checkpoints, progress=progress)
    result = train(loss_fn, model, optimizer(spec), batch_fn, config,
                   state_fingerprint={"attn_only": dataclasses.asdict(spec), "d_vocab": data.d_vocab})
    return result.params, list(result.metrics)
