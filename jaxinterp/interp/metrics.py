"""Metrics: functions of a batch of logits that patching measures, one number per example.

A metric is any ``metric(logits: [batch, pos, d_vocab]) -> [batch]``. The sweeps report
its mean over the batch for every patch. The ones here are Equinox modules: their token
ids are arrays (a new batch of answers reuses the compiled sweep) and their positions are
static ints, which lets a sweep unembed only the positions a metric reads::

    metric = ji.logit_diff(correct=io_tokens, incorrect=s_tokens)   # at the last position
    metric(model(tokens)).shape == (batch,)

A plain function works too; keep the same function object between calls so compiled
sweeps are reused. A metric object may declare the positions it reads with a method
``read_positions(n_pos) -> tuple[int, ...]`` (the ones here do when ``pos`` is an int);
sweeps then compute the last layer only where it is read.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from jaxinterp.errors import ArgumentTypeError, ShapeError
from jaxinterp.hooks.interventions import check_index
from jaxinterp.models.loss import token_losses

Metric = Callable[[Float[Array, "batch pos d_vocab"]], Float[Array, " batch"]]


def _at(logits: Float[Array, "batch pos d_vocab"], pos: int | Array) -> Float[Array, "batch d_vocab"]:
    """Logits at ``pos`` (an int, or one position per example). A concrete position out of
    range raises; a traced one reads NaN there rather than a wrong position."""
    n = logits.shape[1]
    if isinstance(pos, int):
        return logits[:, int(check_index("position", pos, n, f"logits with {n} positions"))]
    pos = jnp.broadcast_to(jnp.asarray(check_index("position", pos, n, f"logits with {n} positions")),
                           logits.shape[:1])
    return jnp.take_along_axis(logits, pos[:, None, None], axis=1, mode="fill", fill_value=jnp.nan)[:, 0]


def _pick(x: Float[Array, "batch d_vocab"], tokens: Int[Array, "..."]) -> Float[Array, " batch"]:
    """``x[i, tokens[i]]``; one token id (an int) applies to every example."""
    tokens = jnp.broadcast_to(jnp.asarray(check_index("token id", tokens, x.shape[-1], "the vocabulary")),
                              x.shape[:1])
    return jnp.take_along_axis(x, tokens[:, None], axis=-1, mode="fill", fill_value=jnp.nan)[:, 0]


class LogitDiff(eqx.Module):
    """``logit[correct] - logit[incorrect]`` at ``pos`` (an int, or one per example)."""

    correct: Int[Array, " batch"]
    incorrect: Int[Array, " batch"]
    pos: int | Int[Array, " batch"] = -1

    def read_positions(self, n_pos: int) -> tuple[int, ...] | None:
        return _read(self.pos, n_pos)

    def __call__(self, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, " batch"]:
        last = _at(logits, self.pos).astype(jnp.float32)
        return _pick(last, self.correct) - _pick(last, self.incorrect)


class TokenProb(eqx.Module):
    """Probability of ``token`` at ``pos`` (softmax over the vocabulary)."""

    token: Int[Array, " batch"]
    pos: int | Int[Array, " batch"] = -1

    def read_positions(self, n_pos: int) -> tuple[int, ...] | None:
        return _read(self.pos, n_pos)

    def __call__(self, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, " batch"]:
        return _pick(jax.nn.softmax(_at(logits, self.pos).astype(jnp.float32), -1), self.token)


class NextTokenLoss(eqx.Module):
    """Mean next-token cross-entropy of ``tokens`` (the prompt itself), per example."""

    tokens: Int[Array, "batch pos"]

    def __call__(self, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, " batch"]:
        return token_losses(logits, self.tokens).mean(-1)


def _read(pos: int | Array, n_pos: int) -> tuple[int, ...] | None:
    return (int(check_index("position", pos, n_pos, f"prompts of {n_pos} tokens")),) if isinstance(pos, int) else None


def _pos(pos: int | ArrayLike) -> int | Array:
    if isinstance(pos, int | np.integer) and not isinstance(pos, bool):
        return int(pos)
    return _ids("pos", pos)


def _ids(what: str, ids: ArrayLike) -> Array:
    """Token ids (or positions) as int32: an int, a list or an array of ints."""
    out = np.asarray(ids) if not isinstance(ids, jax.Array) else ids
    if out.dtype == bool or not jnp.issubdtype(out.dtype, jnp.integer):
        raise ShapeError(f"{what} must be an int token id or a list/array of them, got {ids!r}")
    if out.ndim > 1:
        raise ShapeError(f"{what} must be one id or one per example ([batch]), got shape {out.shape}")
    return jnp.asarray(out, jnp.int32)


def logit_diff(correct: ArrayLike, incorrect: ArrayLike, pos: int | ArrayLike = -1) -> LogitDiff:
    """Logit difference between the ``correct`` and ``incorrect`` answer tokens.

    Each is one token id (an int, used for every example) or one per example; ``pos`` is
    the position read (default the last), or one per example.
    """
    return LogitDiff(_ids("correct", correct), _ids("incorrect", incorrect), _pos(pos))


def token_prob(token: ArrayLike, pos: int | ArrayLike = -1) -> TokenProb:
    """Probability the model gives ``token`` (an int, or one per example) at ``pos``."""
    return TokenProb(_ids("token", token), _pos(pos))


def next_token_loss(tokens: ArrayLike) -> NextTokenLoss:
    """Per-example mean next-token loss on ``tokens``."""
    return NextTokenLoss(jnp.asarray(tokens, jnp.int32))


def read_positions(metric: Metric, n_pos: int) -> tuple[int, ...] | None:
    """The positions ``metric`` reads, if it declares them (``metric.read_positions(n_pos)``).

    A sweep then runs the last layer's queries at those positions only. A metric that
    declares positions must not read any other (it would see the unpatched logits there).
    """
    declared = getattr(metric, "read_positions", None)
    out = declared(n_pos) if callable(declared) else None
    if out is None:
        return None
    return tuple(sorted({int(check_index("position", int(p), n_pos, f"prompts of {n_pos} tokens"))
                         for p in out}))


def _check_output(out, batch: int) -> None:
    if getattr(out, "shape", None) != (batch,):
        got = getattr(out, "shape", type(out).__name__)
        raise ShapeError(f"metric must return one scalar per example, shape ({batch},); got {got}. "
                         "Reduce over positions/vocab inside the metric, but not over the batch.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ShapeError(f"metric must return floats, got dtype {out.dtype}")


def batch_mean(metric: Metric, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, ""]:
    """``metric(logits).mean()``, checking (when traced, so once per compilation) that the
    metric gives one float per example."""
    out = metric(logits)
    _check_output(out, logits.shape[0])
    return out.mean()


def check_metric(metric: Metric, logits: Float[Array, "batch pos d_vocab"] | None = None) -> None:
    """Raises unless ``metric`` is callable and (given ``logits`` or their shape) returns one
    float per example. The sweeps check the output shape when they compile."""
    if not callable(metric):
        raise ArgumentTypeError(f"metric must be callable (logits -> [batch]), got {type(metric).__name__}")
    if logits is not None:
        out = jax.eval_shape(metric, jax.ShapeDtypeStruct(logits.shape, logits.dtype))
        _check_output(out, logits.shape[0])
