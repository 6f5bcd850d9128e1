"""Many toy models trained as one program: ``vmap`` over instances, ``lax.scan`` over steps.

An experiment trains dozens to thousands of independent toy models that differ only in
their feature probability, importance, training set or seed. Each instance's update is
the plain AdamW step on the importance-weighted MSE::

    x ~ data(key_i, t);  g = grad mean_b,j I_ij (target(x) - model_i(x))^2
    model_i, adam_i = adamw_update(g, adam_i, model_i)

and a run is one compiled program per ``log_every`` steps: the instances are cut into
blocks, and for each block ``scan(t, vmap(i in block, step))``, with the data drawn on the
device, so the host only wakes up to log. Blocks exist for the CPU's caches: a vmap over
all 256 instances of a ``batch 1024, n 20`` run streams ~21 MB arrays through memory for
every element-wise op, about 1.7x slower (in CPU time) than keeping a block's arrays in
cache for all its steps (``experiments/benchmarks/RESULTS_toy.md``); blocks of 16
instances (a few MB, within a quarter of a 32 MB L3) measured fastest, 4 (within L2)
1.2-1.3x slower. On accelerators a block is every instance. The data's random bits come
from a fused Threefry-2x32-13 keyed by the instance with the step as its stream
(:func:`cipher_words`), and the gradient is in closed form (:mod:`jaxinterp.models.toy.step`).

Instances are independent (``vmap`` over model, optimiser state, data source and key), so
an instance's result is a function of ``(seed, instance index)`` alone: it does not change
when other instances are added, when blocks change, or when the instance axis is sharded.
With several devices the instances are split over a 1-D mesh ``("instance",)`` (padded
to fill it) and each device runs the same program on its slice, with no communication
(``shard_map``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxinterp.errors import ConfigError, NonFiniteLossError
from jaxinterp.models.toy.data import (
    FixedDataset,
    OnlineFeatures,
    check_importance,
    check_probabilities,
    sample_features,
)
from jaxinterp.models.toy.model import (
    Toy,
    ToyConfig,
    check_finite,
    check_positive_int,
    importance_weighted_mse,
    init_toys,
    target,
)
from jaxinterp.models.toy.step import make_instance_step

PRNG_IMPLS = ("threefry2x32", "philox2x32", "rbg", "unsafe_rbg")
CACHE_BYTES = 8 * 2**20  # per block of instances on CPU: a quarter of the L3 cache (measured best)
CACHE_BYTES_FIXED = 2 * 2**20  # the same with fixed training sets: about the L2 cache
SCHEDULES = ("constant", "cosine")
LOSS_SUBSAMPLE = 8  # fresh batches: the logged loss is measured on 1/8 of each batch


@dataclasses.dataclass(frozen=True)
class ToyTrainConfig:
    """Optimisation settings shared by every instance (AdamW, as in the papers)."""

    steps: int = 10_000
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # "cosine": decay to 0 after the warm-up
    seed: int = 0
    log_every: int = 500  # steps per compiled scan (and per logged loss)
    prng_impl: str = "threefry2x32"  # of the keys; bulk bits: data.cipher_words
    instances_per_block: int = 0  # 0: cache-sized blocks on CPU, all instances elsewhere
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            check_positive_int(name, getattr(self, name))
        if self.instances_per_block:
            check_positive_int("instances_per_block", self.instances_per_block)
        check_finite("lr", self.lr, low=0.0)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}.")
        check_finite("weight_decay", self.weight_decay, low=0.0)
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"warmup_steps must be an int in [0, steps={self.steps}], "
                              f"got {self.warmup_steps!r}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.prng_impl not in PRNG_IMPLS:
            raise ConfigError(f"prng_impl must be one of {PRNG_IMPLS}, got {self.prng_impl!r}.")

    def optimizer(self) -> optax.GradientTransformation:
        if self.schedule == "cosine":
            lr: Any = optax.warmup_cosine_decay_schedule(0.0, self.lr, self.warmup_steps, self.steps)
        elif self.warmup_steps:
            lr = optax.linear_schedule(0.0, self.lr, self.warmup_steps)
        else:
            lr = self.lr
        return optax.adamw(lr, weight_decay=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class ToyRun:
    """Trained instances and how training went."""

    model: Toy  # every leaf has a leading instance axis
    # [n_logs, instances]: mean training loss over each logged stretch (fresh batches: on
    # the first 1/LOSS_SUBSAMPLE of each step's batch; fixed training sets: the whole set)
    loss_history: np.ndarray
    log_steps: np.ndarray  # [n_logs]: the step each stretch ends at
    compile_seconds: float
    train_seconds: float
    n_devices: int
    instances_per_block: int

    @property
    def final_loss(self) -> np.ndarray:
        """Each instance's mean training loss over the last ``log_every`` steps."""
        return self.loss_history[-1]


def instance_keys(key: jax.Array, n: int) -> jax.Array:
    """``fold_in(key, i)`` for each instance ``i``: independent of ``n`` and of sharding."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4))
def _initial_state(cfg: ToyConfig, opt: optax.GradientTransformation, seed: int, prng_impl: str,
                   n: int):
    """Every instance's model and optimiser state, and its data key words (``uint32[2]``)."""
    key = jax.random.key(seed, impl=prng_impl)
    models = init_toys(cfg, instance_keys(jax.random.fold_in(key, 0), n))
    data_keys = instance_keys(jax.random.fold_in(key, 1), n)
    return (models, jax.vmap(opt.init)(models)), data_key_words(data_keys)


def data_key_words(keys: jax.Array) -> jax.Array:
    """Each instance's two Threefry key words for its data stream, drawn from its key."""
    return jax.vmap(lambda k: jax.random.bits(k, (2,), jnp.uint32))(keys)


def _loss(cfg: ToyConfig, model: Toy, x, weights, importance):
    pred = jax.vmap(model)(x)
    return importance_weighted_mse(pred, target(cfg, x), importance, weights)


def make_chunk(cfg: ToyConfig, opt: optax.GradientTransformation, length: int,
               blocks: tuple[int, ...], make_step=make_instance_step):
    """``(states, rest, t0) -> (states, mean losses)`` for groups of instances.

    ``states[g]`` is group ``g``'s ``(model, opt_state)`` and ``rest[g]`` its ``(sources,
    importance, key_words)`` (:func:`data_key_words`), every leaf with a leading instance
    axis. Each group is advanced
    ``length`` steps, ``blocks[g]`` instances at a time (``vmap``), its blocks one after the
    other (``lax.map``). Groups exist so that fixed training sets of different sizes run
    in one program without padding the small ones to the largest. ``make_step`` builds
    the per-instance step (:func:`make_instance_step`; the benchmark swaps in others).
    """
    step = jax.vmap(make_step(cfg, opt), in_axes=(0, 0, 0, 0, 0, None))

    def run_block(args, t0):
        state, sources, importance, key_words = args

        def body(carry, t):
            model, opt_state, loss = step(*carry, sources, importance, key_words, t)
            return (model, opt_state), loss

        state, losses = jax.lax.scan(body, state, t0 + jnp.arange(length))
        return state, losses.mean(0)

    def run_group(args, block, t0):
        n = jax.tree.leaves(args[-1])[0].shape[0]
        if n == block:
            return run_block(args, t0)
        split = jax.tree.map(lambda a: a.reshape(n // block, block, *a.shape[1:]), args)
        out = jax.lax.map(lambda a: run_block(a, t0), split)
        return jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), out)

    def chunk(states, rest, t0):
        outs = [run_group((s, *r), b, t0) for s, r, b in zip(states, rest, blocks, strict=True)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    return chunk


def block_size(cfg: ToyConfig, train: ToyTrainConfig, batch: int, n_local: int, platform: str,
               fixed_data: bool = False) -> int:
    """Instances per vmapped block: ``train.instances_per_block``, else all of them on an
    accelerator, else a power of two whose main step arrays (about ``3 n + 2 m`` floats
    per example) fit in :data:`CACHE_BYTES` (fresh batches: 16 for n=20, m=5, batch 1024,
    the fastest measured, 8 and 32 took 1.1-1.4x as long) or, for fixed training sets read
    from memory at every step, :data:`CACHE_BYTES_FIXED` (the double-descent default run
    took 1.26x the CPU time with the larger budget)."""
    if train.instances_per_block:
        return min(train.instances_per_block, n_local)
    if platform != "cpu":
        return n_local
    per_instance = 4 * batch * (3 * cfg.n_features + 2 * cfg.n_hidden)
    fit = max(1, (CACHE_BYTES_FIXED if fixed_data else CACHE_BYTES) // per_instance)
    return min(1 << (fit.bit_length() - 1), n_local)


def _pad(tree: Any, n: int, total: int) -> Any:
    """Repeats the last instance so the instance axis has ``total`` entries (numpy leaves)."""
    if total == n:
        return tree
    return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], total - n, 0)]), tree)


def _groups(data: FixedDataset | None, n_inst: int) -> list[np.ndarray]:
    """Instances that share a batch shape: all of them, or those with equal training sets."""
    if data is None:
        return [np.arange(n_inst)]
    sizes = np.asarray(data.weights).sum(1).astype(int)
    return [np.flatnonzero(sizes == s) for s in np.unique(sizes)]


def train_toys(
    cfg: ToyConfig,
    feature_probability: Any,
    importance: Any,
    train: ToyTrainConfig = ToyTrainConfig(),
    *,
    data: FixedDataset | None = None,
    devices: Any = None,
) -> ToyRun:
    """Trains one model per entry of ``feature_probability``, all as one program.

    Args:
        cfg: the model shape and variant, shared by all instances.
        feature_probability: ``[instances]``, each in [0, 1] (``1 - sparsity``).
        importance: ``[n_features]`` (shared) or ``[instances, n_features]``.
        train: optimisation settings; instance ``i`` starts from and samples with keys
            folded from ``(train.seed, i)``.
        data: optional fixed training sets (:func:`fixed_datasets`), used full-batch
            instead of fresh batches of ``train.batch_size``.
        devices: devices to split the instances over (default: all of them).

    Returns:
        A :class:`ToyRun` whose ``model`` leaves carry a leading instance axis.
    """
    p = check_probabilities(feature_probability)
    if p.ndim != 1 or p.size == 0:
        raise ConfigError(f"feature_probability must be one value per instance (1-D, non-empty), "
                          f"got shape {list(p.shape)}.")
    n_inst = p.size
    imp = check_importance(importance, cfg.n_features, n_inst)
    imp = np.broadcast_to(imp, (n_inst, cfg.n_features))
    if data is not None and data.x.shape[:1] != (n_inst,):
        raise ConfigError(f"data holds {data.x.shape[0]} training sets for {n_inst} instances.")

    opt = train.optimizer()
    state, key_data = jax.device_get(_initial_state(cfg, opt, train.seed, train.prng_impl, n_inst))
    sources = data if data is not None else OnlineFeatures(
        p, train.batch_size, cfg.n_features, cfg.signed_inputs,
        loss_examples=max(1, train.batch_size // LOSS_SUBSAMPLE))
    # Grouping and padding on the host (numpy): no small eager device ops to compile.
    args = jax.tree.map(np.asarray, (state, sources, imp, key_data))

    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    mesh = Mesh(np.array(devices), ("instance",))
    placement = NamedSharding(mesh, P("instance")) if n_dev > 1 else devices[0]
    groups, blocks, states, rest = _groups(data, n_inst), [], [], []
    for idx in groups:
        g = jax.tree.map(lambda a, idx=idx: a[idx], args)
        batch = train.batch_size
        if data is not None:  # this group's training sets, without the padding of larger ones
            batch = int(g[1].weights.sum(1).max())
            g = (g[0], FixedDataset(g[1].x[:, :batch], g[1].weights[:, :batch]), *g[2:])
        block = block_size(cfg, train, batch, math.ceil(len(idx) / n_dev), devices[0].platform,
                           fixed_data=data is not None)
        g = jax.device_put(_pad(g, len(idx), math.ceil(len(idx) / (n_dev * block)) * n_dev * block),
                           placement)
        blocks.append(block)
        states.append(g[0])
        rest.append(g[1:])
    states, rest = tuple(states), tuple(rest)

    lengths = [train.log_every] * (train.steps // train.log_every)
    lengths += [train.steps % train.log_every] if train.steps % train.log_every else []
    t = time.perf_counter()
    t0 = jnp.asarray(0, jnp.int32)
    programs = {}
    for n in set(lengths):
        fn = make_chunk(cfg, opt, n, tuple(blocks))
        if n_dev > 1:  # each device runs the program on its own slice of the instances
            fn = jax.shard_map(fn, mesh=mesh, in_specs=(P("instance"), P("instance"), P()),
                               out_specs=P("instance"))
        programs[n] = jax.jit(fn, donate_argnums=0).lower(states, rest, t0).compile()
    compile_seconds = time.perf_counter() - t

    history, steps_done = [], 0
    t = time.perf_counter()
    with tqdm(total=train.steps, disable=not train.progress, desc=f"{n_inst} toy models") as bar:
        for n in lengths:
            states, losses = programs[n](states, rest, jnp.asarray(steps_done, jnp.int32))
            loss = _ungroup(jax.device_get(losses), groups, n_inst)
            steps_done += n
            _check_finite(loss, steps_done - n, steps_done)
            history.append(loss)
            bar.update(n)
            bar.set_postfix(loss=f"{loss.mean():.4g}")
    train_seconds = time.perf_counter() - t
    model = _ungroup(jax.device_get([s[0] for s in states]), groups, n_inst)
    return ToyRun(model, np.stack(history), np.cumsum(lengths), compile_seconds, train_seconds,
                  n_dev, max(blocks))


def _ungroup(per_group: Any, groups: list[np.ndarray], n_inst: int) -> Any:
    """Undoes the grouping and padding: one pytree with the instances in their given order."""
    order = np.argsort(np.concatenate(groups))
    trimmed = [jax.tree.map(lambda a, n=len(idx): np.asarray(a)[:n], g)
               for g, idx in zip(per_group, groups, strict=True)]
    return jax.tree.map(lambda *parts: np.concatenate(parts)[order], *trimmed)


def _check_finite(loss: np.ndarray, start: int, end: int) -> None:
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        raise NonFiniteLossError(
            f"The loss of instances {bad[:10].tolist()} became NaN/inf between steps {start} "
            f"and {end}. Try a lower lr, or check the importance and feature probabilities.")


def evaluate_toys(
    cfg: ToyConfig, model: Toy, feature_probability: Any, importance: Any, key: jax.Array,
    n_examples: int = 10_000, batch_size: int = 2_000,
) -> np.ndarray:
    """Each instance's importance-weighted MSE on ``n_examples`` fresh examples: ``[instances]``."""
    p = jnp.asarray(check_probabilities(feature_probability))
    n_inst = p.shape[0]
    imp = jnp.broadcast_to(jnp.asarray(check_importance(importance, cfg.n_features, n_inst)),
                           (n_inst, cfg.n_features))
    n_batches = -(-check_positive_int("n_examples", n_examples) // batch_size)

    @jax.jit
    def run(model, p, imp, keys):
        def one(model, p, imp, key):
            def body(total, k):
                x = sample_features(k, p, batch_size, cfg.n_features, signed=cfg.signed_inputs)
                return total + _loss(cfg, model, x, None, imp), None

            total, _ = jax.lax.scan(body, jnp.float32(0), jax.random.split(key, n_batches))
            return total / n_batches

        return jax.vmap(one)(model, p, imp, keys)

    return np.asarray(run(model, p, imp, instance_keys(key, n_inst)))
