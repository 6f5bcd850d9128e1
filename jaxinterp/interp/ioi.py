"""Indirect object identification (IOI), a small synthetic version to study with patching.

Wang et al. (2022) found the circuit GPT-2 small uses to complete

    "When Mary and John went to the store, John gave a drink to"  ->  " Mary"

the *indirect object* (IO) is the name that appears once; the *subject* (S) appears
twice. Here prompts come from a word-level vocabulary (names, places, objects and the
template words), every prompt has the same 15 tokens, and the roles sit at fixed
positions (``IO``/``S1`` at 2 and 4 in either order, ``S2`` at 10, the answer is read at
the last position 14). The *corrupted* prompt replaces ``S2`` by a third name (the "ABC"
distribution), which removes the information "which name was repeated". The metric is
the logit difference ``logit(IO) - logit(S)``.

:func:`train_ioi_model` trains a small transformer on the task (loss on the answer
token only, Adam) with :func:`jaxinterp.train.train`; a few hundred steps suffice.
"""

from __future__ import annotations

import dataclasses
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int

from jaxinterp.interp.metrics import LogitDiff, logit_diff
from jaxinterp.models import HookedTransformer, TransformerConfig, init_transformer

NAMES = ("Mary", "John", "Tom", "Anna", "James", "Lucy", "Paul", "Emma",
         "Mark", "Sara", "Peter", "Kate", "David", "Alice", "Sam", "Laura")
PLACES = ("store", "park", "school", "office", "beach", "garden", "market", "station")
OBJECTS = ("drink", "book", "ball", "gift", "letter", "pen", "flower", "apple")
OPENERS = ("When", "After", "While", "Once")
VERBS = ("gave", "handed", "sent", "passed")
TEMPLATE = ("<bos>", "{OPEN}", "{A}", "and", "{B}", "went", "to", "the", "{PLACE}", ",", "{S}",
            "{VERB}", "a", "{OBJ}", "to")
ROLES = ("BOS", "OPEN", "A", "and", "B", "went", "to", "the", "PLACE", ",", "S2", "VERB", "a", "OBJ", "END")
VOCAB = tuple(dict.fromkeys(
    [w for w in TEMPLATE if not w.startswith("{")] + list(OPENERS) + list(VERBS) + list(NAMES)
    + list(PLACES) + list(OBJECTS)))
TOKEN = {w: i for i, w in enumerate(VOCAB)}
S2_POS, END_POS = 10, len(TEMPLATE) - 1


@dataclasses.dataclass(frozen=True)
class IOIBatch:
    """A batch of IOI prompts: clean and corrupted tokens ``[n, 15]`` and answer ids ``[n]``."""

    clean: Int[Array, "n pos"]
    corrupted: Int[Array, "n pos"]
    io: Int[Array, " n"]
    s: Int[Array, " n"]

    def metric(self) -> LogitDiff:
        """``logit(IO) - logit(S)`` at the last position."""
        return logit_diff(self.io, self.s, pos=-1)


def decode(tokens: Int[Array, " pos"]) -> list[str]:
    """Token ids back to words."""
    return [VOCAB[int(t)] for t in np.asarray(tokens)]


def ioi_batch(n: int, seed: int = 0) -> IOIBatch:
    """``n`` random IOI prompts (both name orders) with their ABC corruptions."""
    rng = np.random.default_rng(seed)
    names = np.array([TOKEN[w] for w in NAMES])
    pick = np.stack([rng.choice(len(NAMES), 3, replace=False) for _ in range(n)])
    io, s, c = names[pick[:, 0]], names[pick[:, 1]], names[pick[:, 2]]
    swap = rng.random(n) < 0.5
    a, b = np.where(swap, s, io), np.where(swap, io, s)

    def choose(words):
        return np.array([TOKEN[w] for w in words])[rng.integers(0, len(words), n)]

    fill = {"{OPEN}": choose(OPENERS), "{A}": a, "{B}": b, "{PLACE}": choose(PLACES), "{S}": s,
            "{VERB}": choose(VERBS), "{OBJ}": choose(OBJECTS)}
    clean = np.stack([fill[w] if w in fill else np.full(n, TOKEN[w]) for w in TEMPLATE], axis=1)
    corrupted = clean.copy()
    corrupted[:, S2_POS] = c
    return IOIBatch(*(jnp.asarray(x, jnp.int32) for x in (clean, corrupted, io, s)))


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

    def loss_fn(params, batch, key):
        return ioi_loss(params, *batch)

    opt = optax.adam(lr)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(steps=steps, seed=seed, log_every=max(1, steps // 20), name=name,
                             runs_dir=runs_dir or tmp, progress=progress)
        result = train(loss_fn, model, opt, batch_fn, config)
    return result.params, list(result.metrics)
