"""Feature analysis: every feature of an SAE (or transcoder) explained by its data, in one pass.

A token stream goes through the model up to the SAE's site, in chunks of ``batch_size``
sequences; each chunk's latent activations ``a = sae.encode(x)`` ``[batch, pos, d_sae]``
update a running state on the device, with one compiled program per chunk shape and no
loop over features:

* density ``= |{t : a_ts > 0}| / n_tokens`` and the mean activation where it fires;
* the top-``k`` contexts and random contexts per activation interval, each a window of
  tokens with the activation on every token (:mod:`~jaxinterp.features.contexts`);
* the histogram of non-zero activations (:mod:`~jaxinterp.features.histogram`);
* co-occurrence counts (:mod:`~jaxinterp.features.cooccurrence`).

The histogram and co-occurrence read each token's ``max_active`` strongest features (one
``lax.top_k`` per token), so a chunk costs ``tokens x max_active`` updates, not ``tokens x
d_sae``; they are exact when no token has more active features (reported as
``tokens_truncated``). Memory is the chunk plus a state of fixed size (``d_sae x`` slots,
bins and, with co-occurrence, ``d_sae**2`` counts), whatever the number of tokens.
Compile time: the chunk step is one XLA program of ~135 kernels (the model up to the site,
encode, and the bookkeeping above), and on a CPU its cost is LLVM's, kernel by kernel. The
bookkeeping therefore avoids kernel-hungry forms: both context groups share one
window-building loop, slots are assigned by running counts (small matrix products)
instead of scatters, the interval rounds run in one ``lax.scan``. Small chunks (chunk
tokens x ``d_sae`` <= ``SMALL_CHUNK_WORK``: tests, the fast main job) use a copy compiled
at ``-O0``, which halves the first call there and runs in milliseconds anyway; large ones
keep the optimised program (``experiments/benchmarks/RESULTS_features.md``).
Weight-only statistics (logit effects, decoder neighbours) come from
:mod:`~jaxinterp.features.logit_effects` and :mod:`~jaxinterp.features.neighbours`;
:func:`analyze_features` adds them when the model has an unembedding.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxinterp.errors import ConfigError, DataError, HookNameError, ShapeError, unknown_name_message
from jaxinterp.features import contexts as C
from jaxinterp.features import cooccurrence as CO
from jaxinterp.features import histogram as H
from jaxinterp.features.result import FeatureAnalysis
from jaxinterp.features.sparse import sparse_encode
from jaxinterp.hooks import hook_names, run_with_cache


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """What the pass keeps (static: one compiled program per settings and chunk shape).

    Attributes:
        k: top-activating contexts per feature.
        ctx: tokens in each context window (at most the sequence length).
        before: tokens shown before the max-activating token (when the sequence allows).
        n_intervals: activation intervals with sampled contexts (a power of two).
        per_interval: random contexts per interval.
        n_bins: activation histogram bins (a power of two, a multiple of ``n_intervals``).
        max_active: strongest features per token read by the histogram and co-occurrence.
        cooccurrence: count co-occurring features (``4 d_sae**2`` bytes).
        skip_first: positions at the start of every sequence left out (e.g. a BOS token).
        seed: seed of the interval sampling.
        max_new: new contexts whose windows are built per round (0: ``max(d_sae, 1024)``).
    """

    k: int = 16
    ctx: int = 24
    before: int = 16
    n_intervals: int = 8
    per_interval: int = 2
    n_bins: int = 64
    max_active: int = 32
    cooccurrence: bool = True
    skip_first: int = 0
    seed: int = 0
    max_new: int = 0

    def check(self, d_sae: int, seq_len: int) -> None:
        H.check_bins(self.n_bins, self.n_intervals)
        for name in ("k", "ctx", "per_interval", "max_active"):
            if getattr(self, name) < 1:
                raise ConfigError(f"AnalysisSettings.{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.skip_first < seq_len:
            raise ConfigError(f"skip_first={self.skip_first} must be in [0, seq_len={seq_len}).")
        if self.cooccurrence and d_sae > CO.MAX_FEATURES:
            raise ConfigError(f"co-occurrence for d_sae={d_sae} needs a {d_sae}^2 count matrix; "
                              f"pass cooccurrence=False above {CO.MAX_FEATURES} features.")


class AnalysisState(eqx.Module):
    """The running state of the pass (a pytree of device arrays of fixed size)."""

    fires: jax.Array        # [s] tokens where the feature is active
    act_sum: jax.Array      # [s] sum of its activations
    n_tokens: jax.Array     # [] tokens read
    truncated: jax.Array    # [] tokens with more than max_active active features
    hist: H.Histogram
    top: C.Windows
    intervals: C.Windows
    cooc: CO.Cooccurrence | None


@functools.partial(jax.jit, static_argnums=(0, 1, 2))  # one small program, not a dozen eager ones
def init_state(d_sae: int, s: AnalysisSettings, ctx: int) -> AnalysisState:
    return AnalysisState(
        jnp.zeros(d_sae, jnp.int32), jnp.zeros(d_sae, jnp.float32), jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32), H.init_histogram(d_sae, s.n_bins), C.init_windows(d_sae, s.k, ctx),
        C.init_windows(d_sae, s.n_intervals * s.per_interval, ctx),
        CO.init_cooccurrence(d_sae) if s.cooccurrence else None)


def site_input(model: Any, tokens: jax.Array, site: str) -> jax.Array:
    """The activation at ``site`` as ``[batch, pos, d]`` (heads flattened), running a
    transformer only up to the site's block."""
    kwargs = {}
    cfg = getattr(model, "cfg", None)
    parts = site.split(".")
    if cfg is not None and hasattr(cfg, "n_layers") and parts[0] == "blocks" and parts[1].isdigit():
        kwargs["stop_at_layer"] = int(parts[1]) + 1
    _, cache = run_with_cache(model, tokens, names=[site], **kwargs)
    x = cache[site]
    return x.reshape(*x.shape[:2], -1)


def step(state: AnalysisState, model: Any, sae: Any, tokens: jax.Array, seq: jax.Array,
         s: AnalysisSettings, ctx: int) -> AnalysisState:
    """One chunk: ``tokens [batch, pos]`` with sequence ids ``seq`` (-1 = padding row)."""
    x = site_input(model, tokens, sae.cfg.hook_name)
    b, p, d_in = x.shape
    d_sae = sae.cfg.d_sae
    val, idx, n_active, dense = sparse_encode(sae, x.reshape(b * p, d_in), s.max_active)
    valid = ((seq[:, None] >= 0) & (jnp.arange(p)[None, :] >= s.skip_first)).reshape(-1)   # [n]
    val = jnp.where(valid[:, None], val, 0.0)
    n_active = jnp.where(valid, n_active, 0)
    truncated = (n_active > val.shape[1]).sum().astype(jnp.int32)
    # one scatter for both sums (a chunk's counts are far below 2**24, exact in float32)
    sums = jnp.zeros((d_sae, 2), jnp.float32).at[idx].add(jnp.stack([(val > 0).astype(jnp.float32), val], -1))
    fires, act_sum = sums[:, 0].astype(jnp.int32), sums[:, 1]
    if dense is not None:  # exact density and sums when some token has more than max_active active
        def exact(_):
            a = jnp.where(valid[:, None], dense, 0.0)
            return (a > 0).sum(0).astype(jnp.int32), a.sum(0)

        fires, act_sum = jax.lax.cond(truncated > 0, exact, lambda _: (fires, act_sum), None)
    chunk = C.Chunk.build(val, idx, tokens, seq, d_sae, ctx, s.before)
    hist = H.add_values(H.grow_range(state.hist, chunk.v.max(0)), idx, val)
    max_new = s.max_new or max(d_sae, 1024)
    cooc = state.cooc if state.cooc is None else CO.add_tokens(state.cooc, idx, val > 0)
    top, intervals = C.build_windows(chunk, [
        C.update_top(state.top, chunk),
        C.update_intervals(state.intervals, chunk, hist.exponent, s.n_intervals, s.seed, s.before)], max_new)
    return AnalysisState(
        state.fires + fires, state.act_sum + act_sum, state.n_tokens + valid.sum().astype(jnp.int32),
        state.truncated + truncated, hist, top, intervals, cooc)


_step = jax.jit(step, static_argnames=("s", "ctx"), donate_argnums=0)
# Small chunks: compile time dominates (LLVM -O2 over ~130 kernels takes seconds, a chunk runs
# in milliseconds), so the program is built at -O0 (same HLO, same results, 2-3x less compile).
SMALL_CHUNK_WORK = 1 << 22   # chunk tokens x d_sae up to which the -O0 program is used
_step_small = jax.jit(step, static_argnames=("s", "ctx"), donate_argnums=0,
                      compiler_options={"xla_backend_optimization_level": 0})


def check_site(model: Any, sae: Any, seq_len: int) -> None:
    """Errors unless the model reaches the SAE's site with activations of width ``d_in``."""
    site = sae.cfg.hook_name
    if not site:
        raise ConfigError("This SAE has no hook_name: set SAEConfig.hook_name to the site it reads.")
    probe = jnp.zeros((1, seq_len), jnp.int32)
    known = hook_names(model, probe)
    if site not in known:
        raise HookNameError(unknown_name_message("SAE site", site, known)
                            + " The SAE was trained on another model or site.")
    width = jax.eval_shape(lambda m, t: site_input(m, t, site), model, probe).shape[-1]
    if width != sae.cfg.d_in:
        raise ShapeError(f"The SAE reads d_in={sae.cfg.d_in} activations but {site!r} of this model "
                         f"has width {width}: the SAE and the model do not fit together.")


def chunks(tokens: Any, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(tokens [batch_size, pos], seq ids)`` from an array ``[n, pos]`` or an iterable of
    ``[b, pos]`` batches; the last chunk is padded with rows of id -1."""
    source: Iterable = [tokens] if hasattr(tokens, "shape") else tokens
    seen, pos, buffer = 0, None, []
    for batch in source:
        batch = np.asarray(batch)
        if batch.ndim != 2 or not np.issubdtype(batch.dtype, np.integer):
            raise DataError(f"Token batches must be [batch, pos] integer arrays; got {batch.dtype}{list(batch.shape)}.")
        if pos is not None and batch.shape[1] != pos:
            raise DataError(f"Every token batch needs the same sequence length; got {batch.shape[1]} after {pos}.")
        pos = batch.shape[1]
        buffer.extend(batch)
        while len(buffer) >= batch_size:
            rows, buffer = buffer[:batch_size], buffer[batch_size:]
            yield np.stack(rows).astype(np.int32), np.arange(seen, seen + batch_size, dtype=np.int32)
            seen += batch_size
    if buffer:
        n = len(buffer)
        rows = np.stack(buffer + [buffer[-1]] * (batch_size - n)).astype(np.int32)
        ids = np.concatenate([np.arange(seen, seen + n), np.full(batch_size - n, -1)]).astype(np.int32)
        yield rows, ids
        seen += n
    if seen == 0:
        raise DataError("The token source is empty: feature analysis needs at least one sequence.")


def analyze_features(model: Any, sae: Any, tokens: Any, *, batch_size: int = 32,
                     settings: AnalysisSettings = AnalysisSettings(), logits: bool = True,
                     neighbours: int = 8, progress: bool = False, max_sequences: int | None = None
                     ) -> FeatureAnalysis:
    """Streams ``tokens`` through ``model`` and ``sae`` and returns every feature's statistics.

    Args:
        model: a ``HookedTransformer`` (or any function of tokens with hook tags) reaching
            ``sae.cfg.hook_name``.
        sae: an SAE or transcoder (features are read from its input site).
        tokens: an int array ``[n_sequences, pos]`` or an iterable of ``[batch, pos]`` arrays.
        batch_size: sequences per chunk (one compiled program for this shape).
        settings: what to keep (:class:`AnalysisSettings`).
        logits: add logit effects (``W_dec @ W_U``) when the model has an unembedding.
        neighbours: nearest features by decoder cosine to keep (0: none).
        max_sequences: stop after this many sequences of an endless stream.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    start_time = time.perf_counter()
    d_sae = sae.cfg.d_sae
    state, ctx, n_seq = None, 0, 0
    bar = tqdm(desc="feature analysis", unit="seq", disable=not progress)
    for toks, ids in chunks(tokens, batch_size):
        if max_sequences is not None and n_seq >= max_sequences:
            break
        if state is None:
            seq_len = toks.shape[1]
            settings.check(d_sae, seq_len)
            check_site(model, sae, seq_len)
            ctx = min(settings.ctx, seq_len)
            state = init_state(d_sae, settings, ctx)
            run_step = _step_small if toks.size * d_sae <= SMALL_CHUNK_WORK else _step
        state = run_step(state, model, sae, jnp.asarray(toks), jnp.asarray(ids), s=settings, ctx=ctx)
        n_seq += int((ids >= 0).sum())
        bar.update(int((ids >= 0).sum()))
    bar.close()
    jax.block_until_ready(state)
    compute = time.perf_counter() - start_time
    from jaxinterp.features.result import finalize

    result = finalize(state, sae, settings, n_seq)
    if neighbours:
        from jaxinterp.features.neighbours import nearest_features

        result = result.with_fields(neighbours=nearest_features(sae, neighbours))
    if logits and getattr(model, "cfg", None) is not None and hasattr(model, "unembed_matrix"):
        from jaxinterp.features.logit_effects import logit_effects

        result = result.with_fields(logits=logit_effects(model, sae))
    return result.with_fields(meta={**result.meta, "seconds": round(time.perf_counter() - start_time, 3),
                                    "pass_seconds": round(compute, 3),
                                    "tokens_per_second": round(result.n_tokens / max(compute, 1e-9), 1)})
