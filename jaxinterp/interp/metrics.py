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
from jaxtyping import Array, ArrayLike, Float, Int

from jaxinterp.errors import ShapeError

Metric = Callable[[Float[Array, "batch pos d_vocab"]], Float[Array, " batch"]]


def _at(logits: Float[Array, "batch pos d_vocab"], pos: int | Array) -> Float[Array, "batch d_vocab"]:
    if isinstance(pos, int):
        return logits[:, pos]
    return logits[jnp.arange(logits.shape[0]), pos % logits.shape[1]]


def _pick(x: Float[Array, "batch d_vocab"], tokens: Int[Array, " batch"]) -> Float[Array, " batch"]:
    return jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]


class LogitDiff(eqx.Module):
    """``logit[correct] - logit[incorrect]`` at ``pos`` (an int, or one per example)."""

    correct: Int[Array, " batch"]
    incorrect: Int[Array, " batch"]
    pos: int | Int[Array, " batch"] = -1

    def read_positions(self, n_pos: int) -> tuple[int, ...] | None:
        return (self.pos % n_pos,) if isinstance(self.pos, int) else None

    def __call__(self, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, " batch"]:
        last = _at(logits, self.pos).astype(jnp.float32)
        return _pick(last, self.correct) - _pick(last, self.incorrect)


class TokenProb(eqx.Module):
    """Probability of ``token`` at ``pos`` (softmax over the vocabulary)."""

    token: Int[Array, " batch"]
    pos: int | Int[Array, " batch"] = -1

    def read_positions(self, n_pos: int) -> tuple[int, ...] | None:
        return (self.pos % n_pos,) if isinstance(self.pos, int) else None

    def __call__(self, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, " batch"]:
        return _pick(jax.nn.softmax(_at(logits, self.pos).astype(jnp.float32), -1), self.token)


class NextTokenLoss(eqx.Module):
    """Mean next-token cross-entropy of ``tokens`` (the prompt itself), per example."""

    tokens: Int[Array, "batch pos"]

    def __call__(self, logits: Float[Array, "batch pos d_vocab"]) -> Float[Array, " batch"]:
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
        return -_pick_seq(logp, self.tokens[:, 1:]).mean(-1)


def _pick_seq(logp: Float[Array, "b p v"], tokens: Int[Array, "b p"]) -> Float[Array, "b p"]:
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def _pos(pos: int | ArrayLike) -> int | Array:
    return pos if isinstance(pos, int) else jnp.asarray(pos, jnp.int32)


def logit_diff(correct: ArrayLike, incorrect: ArrayLike, pos: int | ArrayLike = -1) -> LogitDiff:
    """Logit difference between the ``correct`` and ``incorrect`` answer tokens."""
    return LogitDiff(jnp.asarray(correct, jnp.int32), jnp.asarray(incorrect, jnp.int32), _pos(pos))


def token_prob(token: ArrayLike, pos: int | ArrayLike = -1) -> TokenProb:
    """Probability the model gives ``token`` at ``pos``."""
    return TokenProb(jnp.asarray(token, jnp.int32), _pos(pos))


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
    return None if out is None else tuple(sorted({int(p) % n_pos for p in out}))


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
        raise TypeError(f"metric must be callable (logits -> [batch]), got {type(metric).__name__}")
    if logits is not None:
        out = jax.eval_shape(metric, jax.ShapeDtypeStruct(logits.shape, logits.dtype))
        _check_output(out, logits.shape[0])
