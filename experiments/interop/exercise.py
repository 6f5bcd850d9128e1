"""The same analysis on any hooked model: cache, ablate, sweep (one trace), differentiate.

``fn(*args)`` is the user's forward (a tagged model, ``apply`` with its variables...)
returning logits ``[batch, pos, vocab]``; ``resid`` is a per-layer hook pattern
(``layers.{l}.hook_out``) and ``mlp`` another (``layers.{l}.mlp_out.hook_out``). The metric
is the logit difference ``logits[:, -1, a] - logits[:, -1, b]`` averaged over the batch.

* **cache**: every layer's ``resid`` from the clean run, stacked ``[layer, batch, pos, d]``;
* **ablate**: zeroing the last layer's MLP output moves the metric; patching it with its
  own value changes nothing (max abs difference);
* **sweep**: activation patching, clean -> corrupted, of ``resid`` at every (layer,
  position): one ``jax.vmap`` under one ``jax.jit`` (the forward is traced once), checked
  against a loop of single patches; the fraction of the clean-vs-corrupted metric gap each
  patch restores;
* **differentiate**: the metric's gradient with respect to a vector added to ``resid`` at
  each layer, and with respect to the parameters (one backward pass), the former checked
  against a finite difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxinterp as ji


def exercise(fn: Callable, args: tuple, clean: jax.Array, corrupt: jax.Array, *, resid: str,
             mlp: str, n_layers: int, tokens: tuple[int, int], axes: tuple[str, ...],
             extra: Callable[[tuple, jax.Array], Any] | None = None) -> dict:
    """Runs the four checks; ``args`` are ``fn``'s arguments before the tokens.

    ``extra(args, clean)``, a model's own checks, runs in the first compiled program; its
    result is returned under ``"extra"`` with the clean logits under ``"logits"``.
    """
    start = time.perf_counter()
    a, b = tokens

    def metric(logits):
        return jnp.mean(logits[..., -1, a] - logits[..., -1, b])

    def hooked(args, toks, ivs=()):
        return ji.run_with_hooks(fn, *args, toks, interventions=list(ivs))

    # Cache (per-layer names, stacked) and ablate, in one compiled program.
    last = n_layers - 1

    def cache_and_ablate(args, clean, corrupt):
        clean_logits, cache = ji.run_with_cache(fn, *args, clean, names=[resid, mlp])
        mlp_name = cache.layers(mlp)[last]
        zero = hooked(args, clean, [ji.patch(mlp, 0.0, layer=last)])
        same = hooked(args, clean, [ji.patch(mlp_name, cache[mlp_name])])
        return (cache.stacked(resid), metric(clean_logits), metric(hooked(args, corrupt)),
                metric(zero), jnp.abs(same - clean_logits).max(), clean_logits,
                None if extra is None else extra(args, clean))

    sources, clean_m, corrupt_m, zero, same, logits, extras = eqx.filter_jit(cache_and_ablate)(
        args, clean, corrupt)
    clean_m, corrupt_m = float(clean_m), float(corrupt_m)

    # Sweep: one trace for every (layer, position).
    traces = []

    def patched(args, layer, pos):
        traces.append(1)
        iv = ji.patch(resid, sources[layer], layer=layer, pos=pos, axes=axes)
        return metric(hooked(args, corrupt, [iv]))

    n_pos = clean.shape[-1]
    layers, positions = jnp.repeat(jnp.arange(n_layers), n_pos), jnp.tile(jnp.arange(n_pos), n_layers)
    grid = eqx.filter_jit(lambda args, ls, ps: jax.vmap(lambda l, p: patched(args, l, p))(ls, ps))(
        args, layers, positions)
    sweep_traces = len(traces)
    single = eqx.filter_jit(patched)
    loop = jnp.stack([single(args, l, p) for l, p in zip(layers, positions, strict=True)])
    restored = (grid - corrupt_m) / (clean_m - corrupt_m)

    # Differentiate: d metric / d (vector added to resid at layer l), every layer at once
    # (one add per layer, all at zero), and d metric / d parameters, in one backward pass;
    # the last layer's gradient against a finite difference.
    arrays, static = eqx.partition(args, eqx.is_array)

    def steered(vs, arrays):
        ivs = [ji.add(resid, vs[l], layer=l, axes=axes) for l in range(n_layers)]
        return metric(hooked(eqx.combine(arrays, static), corrupt, ivs))

    def differentiate(arrays, eps=1e-2):
        vs = jnp.zeros((n_layers, sources.shape[-1]))
        grads, param_grads = jax.grad(steered, argnums=(0, 1))(vs, arrays)
        step = jnp.zeros_like(vs).at[last].set(eps * grads[last] / jnp.linalg.norm(grads[last]))
        finite = (steered(step, arrays) - steered(-step, arrays)) / (2 * eps)
        return grads, param_grads, finite

    grads, param_grads, finite = jax.jit(differentiate)(arrays)
    leaves = [x for x in jax.tree.leaves(param_grads) if jnp.issubdtype(x.dtype, jnp.floating)]
    out = {
        "hooks": len(ji.hook_names(fn, *args, clean)),
        "cache_shape": list(sources.shape),
        "clean_metric": clean_m, "corrupt_metric": corrupt_m,
        "ablate_last_mlp_metric": float(zero),
        "patch_with_itself_max_abs": float(same),
        "sweep_traces": sweep_traces,
        "sweep_vs_single_max_abs": float(jnp.abs(grid - loop).max()),
        "restored_fraction": np.round(np.asarray(restored).reshape(n_layers, n_pos), 3).tolist(),
        "grad_norm_per_layer": np.round(np.asarray(jnp.linalg.norm(grads, axis=-1)), 4).tolist(),
        "grad_vs_finite_difference": [float(jnp.linalg.norm(grads[last])), float(finite)],
        "param_grad_finite_and_nonzero": bool(all(np.isfinite(np.asarray(x)).all() for x in leaves)
                                              and any(np.abs(x).max() > 0 for x in leaves)),
    }
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out, logits, extras
