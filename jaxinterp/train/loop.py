"""The generic training loop: any pure loss, any pytree of parameters, any optax optimiser.

::

    result = train(loss_fn, params, optax.adam(1e-3), batch_fn, TrainConfig(steps=1000))

* ``loss_fn(params, batch, key) -> (loss, metrics)`` is pure; ``params`` may be a dict of
  arrays or an Equinox module (only its inexact arrays are trained; see ``step.py``).
* ``batch_fn(step) -> batch`` must be deterministic in ``step``: the data position *is*
  the step, which is what makes resuming exact without saving any iterator state.
* Randomness is ``fold_in(key(seed), step)``, also a function of the step.
* Optional ``post_step(params, opt_state, state, aux, key, step) -> (params, opt_state,
  state, metrics)`` runs after every update inside the same compiled step (constraints,
  resets, running statistics), with ``state`` an extra pytree of arrays carried between
  steps and checkpointed; see ``step.py``. The SAE trainer is built on this.

Checkpoints (``checkpoint_every``) hold params, optimiser state, step and key. Run the
same command after a crash or ``kill -9`` and it continues from the latest good
checkpoint, ending with parameters bitwise equal to a run that was never interrupted.
The run's fingerprint (``seed`` plus ``state_fingerprint``) is stored with every
checkpoint, and resuming under a different one raises :class:`CheckpointError`.

A NaN or inf in the loss or gradients is refused on the device and reported on the
host at the next log or checkpoint step as :class:`NonFiniteLossError`; nothing after
the last good checkpoint is saved. Progress (loss, steps/s, tokens/s for integer token
batches) goes to a tqdm bar, metrics to ``runs/<name>/metrics.json``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxinterp.errors import CheckpointError, ConfigError, NonFiniteLossError
from jaxinterp.io.checkpoint import Checkpointer
from jaxinterp.train.config import TrainConfig, TrainResult
from jaxinterp.train.placement import commit, copy_arrays, replicated_sharding
from jaxinterp.train.runlog import RunLog
from jaxinterp.train.step import LossFn, make_train_step

PyTree = Any


def train(
    loss_fn: LossFn,
    params: PyTree,
    optimizer: optax.GradientTransformation,
    batch_fn: Callable[[int], PyTree],
    config: TrainConfig,
    eval_fn: Callable[[PyTree, PyTree], Any] | None = None,
    eval_batch_fn: Callable[[int], PyTree] | None = None,
    state_fingerprint: Mapping[str, Any] | None = None,
    *,
    post_step: Callable[..., tuple] | None = None,
    state: PyTree = None,
) -> TrainResult:
    """Train ``params`` for ``config.steps`` updates, resuming from checkpoints if present.

    Args:
        loss_fn: ``loss_fn(params, batch, key) -> (scalar loss, dict of scalar metrics)``.
        params: initial parameters (any pytree; Equinox modules included). Not modified.
        optimizer: an optax ``GradientTransformation``.
        batch_fn: ``batch_fn(step) -> batch``, deterministic in ``step``.
        config: schedule and output folder.
        eval_fn: optional ``eval_fn(params, eval_batch) -> scalar or dict``; logged with an
            ``eval_`` prefix every ``config.eval_every`` steps and after the last one.
        eval_batch_fn: ``eval_batch_fn(step) -> eval_batch`` (``None`` is passed without it).
        state_fingerprint: JSON-able dict of whatever defines the run (model config, lr,
            data...); a checkpoint written under a different one is refused.
        post_step: optional pure ``post_step(params, opt_state, state, aux, key, step) ->
            (params, opt_state, state, metrics)`` applied after every update, inside the
            compiled step (``aux`` is the loss's optional third output); its metrics are
            logged with the loss's.
        state: optional pytree of arrays carried from step to step, checkpointed with the
            parameters but not trained; when given, the loss is called as
            ``loss_fn(params, batch, key, state)``. It comes back as ``TrainResult.state``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss or gradients became NaN/inf (nothing bad was saved).
        CheckpointError: the checkpoints belong to another configuration or are unreadable.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}.")
    if eval_batch_fn is not None and eval_fn is None:
        raise ConfigError("eval_batch_fn was given without eval_fn.")
    trainable, static = eqx.partition(params, eqx.is_inexact_array)
    if not jax.tree.leaves(trainable):
        raise ConfigError("params has no floating-point arrays to train.")
    fingerprint = {"train.seed": config.seed, **dict(state_fingerprint or {})}

    with_state = state is not None
    replicated = replicated_sharding(trainable)
    extra = state
    state = _initial_state(trainable, optimizer, config.seed, replicated, extra)
    ckpt = None
    if config.checkpoint_every:
        ckpt = Checkpointer(
            config.checkpoint_dir, keep=config.keep_checkpoints, fingerprint=fingerprint
        )
    bar = None
    try:
        start, state = _resume(ckpt, state, config.steps)
        bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc=config.name)
        log = RunLog(
            config.run_dir,
            {"train": config.to_json(), "fingerprint": fingerprint},
            resume_step=start if start > 0 else None,
        )
        params_, opt_state, key = state["params"], state["opt_state"], state["key"]
        extra = state["extra"]
        bad = commit(jnp.asarray(-1, jnp.int32), replicated)  # first non-finite step, or -1
        shardings = None  # on a mesh, keep every leaf where it started (see placement.py)
        if replicated is not None and len(replicated.device_set) > 1:
            shardings = jax.tree.map(lambda x: x.sharding, (params_, opt_state, extra, bad))
        step_fn = make_train_step(
            loss_fn, optimizer, static, shardings, post_step=post_step, with_state=with_state
        )
        run_eval = None
        if eval_fn is not None:
            run_eval = jax.jit(lambda p, b: eval_fn(eqx.combine(p, static), b))
        batch = batch_fn(start) if start < config.steps else None
        if batch is not None:
            _check_loss_fn(loss_fn, static, params_, batch, key, extra, with_state)
        speed = _Throughput(_tokens_per_step(batch))

        for i in range(start, config.steps):
            batch = batch if i == start else batch_fn(i)
            params_, opt_state, extra, bad, loss, metrics = step_fn(
                params_, opt_state, extra, bad, batch, key, np.int32(i)
            )
            s = i + 1
            speed.steps += 1
            bar.update(1)
            last = s == config.steps
            do_eval = run_eval is not None and (
                last or (config.eval_every > 0 and s % config.eval_every == 0)
            )
            do_ckpt = ckpt is not None and (last or s % config.checkpoint_every == 0)
            if s % config.log_every == 0 or last:  # the only per-step device-to-host copy
                loss_v, metrics_v, bad_v = jax.device_get((loss, metrics, bad))
                _raise_if_bad(int(bad_v), s, log, ckpt)
                rates = speed.rates()
                log.record(s, {"loss": loss_v, **metrics_v, **rates})
                bar.set_postfix(
                    loss=f"{float(loss_v):.4g}", **{k: f"{v:.3g}" for k, v in rates.items()}
                )
            if not (do_eval or do_ckpt):
                continue
            _raise_if_bad(int(jax.device_get(bad)), s, log, ckpt)
            with speed.paused():
                if do_eval:
                    eval_batch = eval_batch_fn(s) if eval_batch_fn is not None else None
                    out = jax.device_get(run_eval(params_, eval_batch))
                    out = out if isinstance(out, Mapping) else {"loss": out}
                    log.record(s, {f"eval_{k}": v for k, v in out.items()}, flush=True)
                if do_ckpt:
                    log.flush()  # metrics.json always covers every checkpoint
                    step_ = commit(jnp.asarray(s, jnp.int32), replicated)
                    ckpt.save(s, {"params": params_, "opt_state": opt_state, "step": step_,
                                  "key": key, "extra": extra})
        log.flush()
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    return TrainResult(
        params=eqx.combine(params_, static),
        opt_state=opt_state,
        state=extra,
        step=config.steps,
        metrics=list(log.records),
        run_dir=config.run_dir,
        resumed_from=start if start > 0 else None,
    )


def _initial_state(
    trainable: PyTree, optimizer: optax.GradientTransformation, seed: int, replicated: Any,
    extra: PyTree = None,
) -> dict[str, Any]:
    """Fresh, committed buffers: the step donates its inputs (the caller keeps theirs), and
    a fresh and a resumed run must present the same placements (see placement.py)."""
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
        opt_state = optimizer.init(trainable)
    state = {
        "params": copy_arrays(trainable),
        "opt_state": copy_arrays(opt_state),
        "step": jnp.asarray(0, jnp.int32),
        "key": jax.random.key(seed),
        "extra": copy_arrays(extra),
    }
    return commit(state, replicated)


def _resume(ckpt: Checkpointer | None, state: dict, steps: int) -> tuple[int, dict]:
    """The latest good checkpoint's ``(step, state)``, or ``(0, state)`` for a fresh run."""
    if ckpt is None or ckpt.latest_step() is None:
        return 0, state
    start, state = ckpt.restore(state)
    if start > steps or int(state["step"]) != start:
        raise CheckpointError(
            f"Checkpoint step {start} in {ckpt.directory} is past TrainConfig.steps={steps} "
            f"(or holds step {int(state['step'])}); raise steps or use a new run name."
        )
    return start, state


class _Throughput:
    """Steps (and tokens) per second since the last log, not counting evals and saves."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step, self.steps, self.start = tokens_per_step, 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.start += time.perf_counter() - t

    def rates(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        rate = self.steps / elapsed if elapsed > 0 else 0.0
        self.steps, self.start = 0, time.perf_counter()
        out = {"steps_per_s": rate}
        if self.tokens_per_step:
            out["tokens_per_s"] = rate * self.tokens_per_step
        return out


def _check_loss_fn(
    loss_fn: LossFn, static: PyTree, params: PyTree, batch: PyTree, key: Any, extra: PyTree,
    with_state: bool,
) -> None:
    """Trace ``loss_fn`` once abstractly and check it returns ``(scalar, dict[, aux])``."""
    def call(p, b, k, e):
        return loss_fn(eqx.combine(p, static), b, k, *((e,) if with_state else ()))

    out = jax.eval_shape(call, params, batch, key, extra)
    ok = isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[1], Mapping)
    if not ok or getattr(out[0], "shape", None) != ():
        raise ConfigError(
            "loss_fn(params, batch, key) must return (scalar loss, dict of metrics) or (scalar "
            f"loss, dict of metrics, aux); got {jax.tree.map(lambda x: f'{x.dtype}{list(x.shape)}', out)}."
        )


def _tokens_per_step(batch: PyTree) -> int:
    """Number of tokens in a batch: the size of its first integer array (0 if none)."""
    for leaf in jax.tree.leaves(batch):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.integer):
            return int(np.prod(leaf.shape))
    return 0


def _raise_if_bad(bad_step: int, step: int, log: RunLog, ckpt: Checkpointer | None) -> None:
    if bad_step < 0:
        return
    log.record(step, {"nonfinite_at_step": bad_step}, flush=True)
    where = (
        f"The latest checkpoint is step {ckpt.latest_step()} in {ckpt.directory}; nothing later was saved."
        if ckpt is not None and ckpt.latest_step() is not None
        else "No checkpoint was saved."
    )
    error = NonFiniteLossError(
        f"Loss or gradients became NaN/inf at step {bad_step} (batch_fn({bad_step})); that update "
        f"and all later ones were refused. {where} Try: a lower learning rate, gradient clipping "
        "(optax.clip_by_global_norm), float32 instead of bfloat16, checking batch_fn"
        f"({bad_step}) for bad values, or guarding log/division by zero in the loss."
    )
    error.step = bad_step
    raise error
