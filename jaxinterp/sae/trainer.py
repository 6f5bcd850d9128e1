"""Training SAEs on the generic loop: :func:`train_sae`.

The SAE trainer is not a second training loop: it is a loss, an optimiser and a
post-step function handed to :func:`jaxinterp.train.train`, which brings the jitted
step, checkpoints with exact resume after ``kill -9``, the NaN guard, progress and
``metrics.json``. What is SAE-specific:

* **Loss**: :func:`jaxinterp.sae.losses.sae_loss` of every SAE being trained (several
  widths, sites or coefficients train in one step from one activation stream; their
  parameters are disjoint, so the summed loss gives each its own gradient).
* **Schedules**: Adam with a linear learning-rate warm-up and a linear decay to 0 over
  the last ``lr_decay_steps``; the L1/L0 coefficient ramps up over
  ``sparsity_warmup_steps`` (Anthropic's April 2024 update).
* **Post-step** (inside the compiled step, see :mod:`jaxinterp.sae.callbacks`): decoder
  rows back to unit norm, JumpReLU thresholds kept >= 0, the BatchTopK threshold
  estimate, per-latent "steps since fired" and a running density, and at the
  ``resample_steps`` the dead latents of an L1 SAE resampled as in Towards
  Monosemanticity. TopK SAEs instead give dead latents the auxiliary-k loss.
* **Input scaling** (``normalize_activations="expected_average_only_in"``): inputs are
  multiplied by ``sqrt(d_in) / mean ||x||`` (estimated on the first batches) during
  training, and the scale is folded into the weights of the SAE returned.
* **Sharding**: with ``mesh="data=4,model=2"`` the batch splits over ``data`` and the
  dictionary over ``model`` (see :mod:`jaxinterp.sae.sharding`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.errors import ConfigError, DataError, ShapeError
from jaxinterp.sae import callbacks
from jaxinterp.sae.batches import ArrayBatches, IteratorBatches, as_site_dict
from jaxinterp.sae.config import SAEConfig
from jaxinterp.sae.losses import sae_loss
from jaxinterp.sae.sae import SAE, init_sae
from jaxinterp.sae.sharding import check_divides, make_mesh, place_batch, put, sae_shardings
from jaxinterp.train import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class TrainSAEConfig:
    """How SAEs are trained (what they are is each :class:`SAEConfig`)."""

    steps: int = 1000
    batch_size: int = 4096  # activation rows (tokens) per step
    lr: float = 3e-4
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 0  # linear decay to 0 over the last steps (April 2024: 20%)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    sparsity_warmup_steps: int = 0  # L1 / L0 coefficient ramps linearly from 0
    dead_after_tokens: int = 1_000_000  # a latent silent this long is dead
    resample_steps: tuple[int, ...] = ()  # L1 SAEs: resample dead latents after these steps
    batchtopk_threshold_lr: float = 0.01
    init_b_dec: str = "mean"  # "mean" of the first batch (autoencoders), or "zeros"
    sparse_topk: bool = True  # TopK's sparse path (False: dense, for comparison)
    normalize_batches: int = 8  # batches used to estimate the input scale
    mesh: str = ""  # "data=4,model=2"; "" = one device
    seed: int = 0
    name: str = "sae"
    runs_dir: str = "runs"
    log_every: int = 50
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "resample_steps", tuple(int(s) for s in self.resample_steps))
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainSAEConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.init_b_dec not in ("mean", "zeros"):
            raise ConfigError(f"init_b_dec must be 'mean' or 'zeros', got {self.init_b_dec!r}.")


@dataclasses.dataclass(frozen=True)
class SAETrainResult:
    """What :func:`train_sae` returns: the SAEs (input scale folded in), their training
    state (densities, dead counters), the logged metrics and where the run lives."""

    saes: dict[str, SAE]
    state: dict[str, Any]
    metrics: list[dict[str, Any]]
    input_scales: dict[str, tuple[float, float]]
    run_dir: Any
    seconds: float
    resumed_from: int | None = None

    @property
    def sae(self) -> SAE:
        """The SAE, when one was trained."""
        if len(self.saes) != 1:
            raise ConfigError(f"{len(self.saes)} SAEs were trained; pick one of {sorted(self.saes)}.")
        return next(iter(self.saes.values()))


Data = Any  # array, (x, y), dict of arrays, iterator of batches, callable step -> batch, store


def train_sae(
    saes: SAE | SAEConfig | Mapping[str, SAE | SAEConfig],
    data: Data,
    config: TrainSAEConfig = TrainSAEConfig(),
) -> SAETrainResult:
    """Train one SAE, or several from one activation stream, on the generic loop.

    Args:
        saes: an :class:`SAE`, an :class:`SAEConfig` (initialised from ``config.seed``), or
            a dict of them by name (several widths, sites or coefficients at once).
        data: activations: an array ``[n, d_in]``, an ``(x, y)`` pair for a transcoder, a
            dict ``{site: array}``, an iterator of such batches, a callable ``step ->
            batch``, or an :class:`~jaxinterp.sae.store.ActivationStore`. Each SAE reads
            the site named by its ``hook_name`` (or the only one there is).
        config: the schedule, mesh and output folder.

    Returns:
        An :class:`SAETrainResult`; ``result.sae`` when one SAE was trained.
    """
    start_time = time.perf_counter()
    single = not isinstance(saes, Mapping)
    named = {"sae": saes} if single else dict(saes)
    if not named:
        raise ConfigError("train_sae needs at least one SAE.")
    mesh = make_mesh(config.mesh)
    batch_fn, sites = _batch_source(data, config)
    models = {}
    for i, (name, sae) in enumerate(named.items()):
        if isinstance(sae, SAEConfig):
            sae = init_sae(sae, jax.random.fold_in(jax.random.key(config.seed), i))
        if not isinstance(sae, SAE):
            raise ConfigError(f"SAE {name!r} must be an SAE or SAEConfig, got {type(sae).__name__}.")
        check_divides(mesh, sae.cfg.d_sae, config.batch_size, f"SAE {name!r}")
        models[name] = sae
    keys = {name: _site_keys(sae.cfg, sites, name) for name, sae in models.items()}
    first = batch_fn(0)
    scales = {name: _input_scales(sae.cfg, batch_fn, keys[name], config) for name, sae in models.items()}
    if config.init_b_dec == "mean":
        models = {n: _init_b_dec(s, first, keys[n], scales[n]) for n, s in models.items()}
    shardings = {n: sae_shardings(s, mesh) for n, s in models.items()}
    params = put(models, shardings)
    state = {n: callbacks.init_state(s.cfg, mesh) for n, s in models.items()}
    tokens_per_step = config.batch_size
    dead_steps = max(1, math.ceil(config.dead_after_tokens / tokens_per_step))
    loss_fn = _Loss(tuple(keys.items()), tuple(scales.items()), dead_steps,
                    max(config.sparsity_warmup_steps, 0), config.sparse_topk)
    post = callbacks.PostStep(tuple((n, s.cfg) for n, s in models.items()), dead_steps,
                              config.resample_steps, config.batchtopk_threshold_lr)
    optimizer = _optimizer(config.lr, config.lr_warmup_steps, config.lr_decay_steps, config.steps,
                           config.adam_beta1, config.adam_beta2)
    train_cfg = TrainConfig(
        steps=config.steps, seed=config.seed, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
        name=config.name, runs_dir=config.runs_dir, progress=config.progress,
    )
    result = train(
        loss_fn, params, optimizer, lambda step: place_batch(mesh, _select(batch_fn(step), keys)),
        train_cfg, state_fingerprint=_fingerprint(models, scales, config, data),
        post_step=post, state=state,
    )
    trained = {n: s.fold_input_scale(*scales[n]) for n, s in result.params.items()}
    return SAETrainResult(trained, result.state, result.metrics, scales, result.run_dir,
                          time.perf_counter() - start_time, result.resumed_from)


def _batch_source(data: Data, config: TrainSAEConfig) -> tuple[Callable[[int], dict], dict[str, int]]:
    if hasattr(data, "batch_size") and hasattr(data, "sites") and callable(data):  # store
        if data.batch_size != config.batch_size:
            raise ConfigError(f"The activation store makes batches of {data.batch_size} rows; "
                              f"TrainSAEConfig.batch_size is {config.batch_size}.")
        return data, dict(data.sites)
    if callable(data) and not hasattr(data, "shape"):
        first = as_site_dict(data(0))
        return (lambda s: as_site_dict(data(s))), {k: v.shape[-1] for k, v in first.items()}
    if hasattr(data, "shape") or isinstance(data, (Mapping, tuple)):
        source = ArrayBatches(data, config.batch_size, seed=config.seed)
        return source, source.sites
    if hasattr(data, "__iter__"):
        source = IteratorBatches(data)
        return source, source.sites
    raise DataError(f"Cannot train on {type(data).__name__}: pass an array, a dict of arrays, an "
                    "iterator of batches, a callable step -> batch, or an ActivationStore.")


def _site_keys(cfg: SAEConfig, sites: Mapping[str, int], name: str) -> tuple[str, str | None]:
    """Which batch entries an SAE reads (input, and a transcoder's target)."""
    def pick(hook: str, what: str, fallback: str) -> str:
        if hook and hook in sites:
            return hook
        if fallback in sites and (not hook or set(sites) <= {"x", "y"}):
            return fallback
        if not hook and len(sites) == 1:
            return next(iter(sites))
        from jaxinterp.errors import HookNameError, unknown_name_message
        raise HookNameError(unknown_name_message(f"site for the {what} of SAE {name!r}",
                                                 hook or "(no hook_name)", sites))

    x_key = pick(cfg.hook_name, "input", "x")
    y_key = pick(cfg.hook_name_out, "output", "y") if cfg.is_transcoder else None
    for key, width, what in ((x_key, cfg.d_in, "d_in"), (y_key, cfg.d_target, "d_out")):
        if key is not None and sites[key] != width:
            raise ShapeError(f"SAE {name!r} has {what}={width} but site {key!r} has width "
                             f"{sites[key]}: the SAE does not fit these activations.")
    return x_key, y_key


def _select(batch: dict, keys: Mapping[str, tuple[str, str | None]]) -> dict:
    wanted = {k for pair in keys.values() for k in pair if k is not None}
    return {k: batch[k] for k in wanted}


def _input_scales(cfg: SAEConfig, batch_fn, keys, config: TrainSAEConfig) -> tuple[float, float]:
    """``sqrt(d) / mean ||x||`` over the first batches (input, and output for a transcoder)."""
    if cfg.normalize_activations == "none":
        return 1.0, 1.0
    n = max(1, min(config.normalize_batches, config.steps))
    batches = [batch_fn(i) for i in range(n)]

    def scale(key: str, d: int) -> float:
        norms = np.concatenate([np.linalg.norm(np.asarray(b[key], np.float64), axis=-1) for b in batches])
        return float(math.sqrt(d) / max(norms.mean(), 1e-12))

    s_in = scale(keys[0], cfg.d_in)
    return s_in, (scale(keys[1], cfg.d_target) if keys[1] is not None else s_in)


def _init_b_dec(sae: SAE, batch: dict, keys, scales) -> SAE:
    import equinox as eqx

    target = keys[1] if keys[1] is not None else keys[0]
    mean = np.asarray(batch[target], np.float64).mean(0) * scales[1]
    return eqx.tree_at(lambda s: s.b_dec, sae, jnp.asarray(mean, sae.b_dec.dtype))


@dataclasses.dataclass(frozen=True)
class _Loss:
    """The summed loss of every SAE; a frozen dataclass, so equal settings share a compile."""

    keys: tuple[tuple[str, tuple[str, str | None]], ...]
    scales: tuple[tuple[str, tuple[float, float]], ...]
    dead_steps: int
    warmup: int
    sparse: bool

    def __call__(self, params: dict[str, SAE], batch: dict, key, state: dict):
        total, metrics, aux = jnp.zeros((), jnp.float32), {}, {}
        keys, scales = dict(self.keys), dict(self.scales)
        for name, sae in params.items():
            (x_key, y_key), (s_in, s_out) = keys[name], scales[name]
            x = batch[x_key] * s_in
            y = batch[y_key] * s_out if y_key is not None else None
            st = state[name]
            ramp = 1.0
            if self.warmup > 0:
                ramp = jnp.minimum(1.0, (st["step"] + 1).astype(jnp.float32) / self.warmup)
            loss, m, a = sae_loss(sae, x, y, dead=st["since_fired"] >= self.dead_steps,
                                  sparsity_scale=ramp, sparse=self.sparse)
            total = total + loss
            prefix = "" if len(params) == 1 else f"{name}/"
            metrics.update({f"{prefix}{k}": v for k, v in m.items()})
            aux[name] = a
        return total, metrics, aux


@functools.lru_cache(maxsize=16)
def _optimizer(lr: float, warm: int, decay: int, steps: int, b1: float, b2: float
               ) -> optax.GradientTransformation:
    """Adam with linear warm-up and a linear decay to 0 over the last ``decay`` steps
    (cached, so equal settings give the same object and share a compiled step)."""
    def schedule(count):
        count = count.astype(jnp.float32)
        up = jnp.minimum(1.0, (count + 1) / warm) if warm > 0 else 1.0
        down = jnp.clip((steps - count) / decay, 0.0, 1.0) if decay > 0 else 1.0
        return lr * up * down

    return optax.adam(schedule, b1=b1, b2=b2)


_NOT_IN_FINGERPRINT = ("steps", "name", "runs_dir", "log_every", "checkpoint_every",
                       "keep_checkpoints", "progress", "mesh")


def _fingerprint(models: dict[str, SAE], scales, config: TrainSAEConfig, data: Data) -> dict:
    train_fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_FINGERPRINT}
    describe = getattr(data, "fingerprint", None)
    return {
        "saes": {n: s.cfg.to_dict() for n, s in models.items()},
        "sae_train": train_fields,
        "input_scales": {n: list(v) for n, v in scales.items()},
        "data": describe() if callable(describe) else type(data).__name__,
    }
