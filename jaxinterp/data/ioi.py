"""Indirect object identification (IOI): a small synthetic version of the task, to study
with patching.

Wang et al. (2022) found the circuit GPT-2 small uses to complete

    "When Mary and John went to the store, John gave a drink to"  ->  " Mary"

the *indirect object* (IO) is the name that appears once; the *subject* (S) appears
twice. Here prompts come from a word-level vocabulary (names, places, objects and the
template words), every prompt has the same 15 tokens, and the roles sit at fixed
positions (``IO``/``S1`` at 2 and 4 in either order, ``S2`` at 10, the answer is read at
the last position 14). The *corrupted* prompt replaces ``S2`` by a third name (the "ABC"
distribution), which removes the information "which name was repeated". The usual
metric is the logit difference ``logit(IO) - logit(S)`` at the last position,
``ji.logit_diff(batch.io, batch.s)``. A model that does the task:
:func:`jaxinterp.recipes.ioi.train_ioi_model`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

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
