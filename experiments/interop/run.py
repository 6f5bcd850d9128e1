"""jaxinterp's transforms inside three models written in their communities' idioms.

* ``nnx_decoder.py``: Flax NNX, layers in a Python list, trained in place by
  ``nnx.Optimizer``; tagged in place by ``tag_nnx_submodules``.
* ``linen_scan_decoder.py``: Flax linen, ``nn.scan(nn.remat(DecoderLayer))`` with stacked
  parameters; two lines changed to ``jl.scan(jl.remat(...))``; every module output
  tagged by ``hooked_apply``.
* ``equinox_transformer.py``: per-example Equinox, ``jax.vmap`` over positions inside and
  over the batch in the loss, trained by an ``eqx.filter_jit`` step; every submodule
  tagged by ``tag_submodules``.

Each is trained for a few steps, then cached, ablated, swept (activation patching of the
residual stream, clean -> corrupted, every layer x position: one trace, checked against
single patches) and differentiated (:mod:`exercise`). The models are tiny and barely
trained, so the restored fractions show the mechanics, not a circuit: positions before the
corruption (0, 1) restore exactly nothing, and the last layer's output at the last
position restores everything. Model-specific checks: the NNX model
keeps agreeing with its tagged self while it trains in place, and its state paths do not
change; the linen model's parameters and outputs equal the ``nn.scan(nn.remat(...))``
original's; the Equinox model's hooks under its own vmap see whole sequences.

Run:  python experiments/interop/run.py      (writes runs/interop/results.json)
"""

from __future__ import annotations

import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import equinox_transformer as eqx_model  # noqa: E402
import linen_scan_decoder as linen_model  # noqa: E402
import nnx_decoder as nnx_model  # noqa: E402
from exercise import exercise  # noqa: E402

import jaxinterp as ji  # noqa: E402
from jaxinterp.hooks.equinox_bridge import tag_submodules  # noqa: E402
from jaxinterp.hooks.equinox_bridge import untag as untag_eqx  # noqa: E402
from jaxinterp.hooks.flax_bridge import hooked_apply  # noqa: E402
from jaxinterp.hooks.nnx_bridge import tag_nnx_submodules, untag  # noqa: E402

BATCH, POS = 4, 8
AXES = ("batch", "pos", "d_model")


def data(vocab: int, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training tokens, and a clean/corrupted pair differing at position 2."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, vocab, (BATCH, POS + 1), dtype=np.int32)
    clean = rng.integers(0, vocab, (BATCH, POS), dtype=np.int32)
    corrupt = clean.copy()
    corrupt[:, 2] = (clean[:, 2] + 7) % vocab
    return jnp.asarray(train), jnp.asarray(clean), jnp.asarray(corrupt)


def run_nnx(steps: int = 3) -> dict:
    model, optimizer = nnx_model.make(0)
    train, clean, corrupt = data(model.token_embed.num_embeddings)
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(model))]
    tag_nnx_submodules(model)  # in place
    drift = []
    for _ in range(steps):  # train the model itself; there is no copy to drift
        nnx_model.train_step(model, optimizer, train)
        hooked = ji.run_with_hooks(model, clean, interventions=[])
        untag(model)
        drift.append(float(jnp.abs(hooked - model(clean)).max()))
        tag_nnx_submodules(model)
    q = "layers.0.attn.query.hook_out"  # [batch, pos, head, d_head]: pos= names its axis

    def query_patch(args, tokens):
        _, before = ji.run_with_cache(args[0], tokens, names=q)
        _, after = ji.run_with_hooks(args[0], tokens, names=q, interventions=[
            ji.patch(q, 0.0, pos=1, axes=("batch", "pos", "head", "d_head"))])
        return before[q], after[q]

    out, _, (before, after) = exercise(
        lambda m, t: m(t), (model,), clean, corrupt, resid="layers.{l}.hook_out",
        mlp="layers.{l}.mlp_out.hook_out", n_layers=len(model.layers), tokens=(1, 2), axes=AXES,
        extra=query_patch)
    out["query_pos1_zeroed_only_pos1"] = bool(
        jnp.all(after[:, 1] == 0) and jnp.array_equal(after[:, 2:], before[:, 2:]))
    out["state_paths_unchanged"] = paths == [p for p, _ in nnx.to_flat_state(nnx.state(model))]
    out["drift_after_training_in_place"] = max(drift) if drift else None
    return out


def run_linen(steps: int = 3) -> dict:
    model, params = linen_model.make(0)
    train, clean, corrupt = data(model.cfg.vocab)
    grad_step = jax.jit(jax.grad(linen_model.loss_fn), static_argnums=1)
    for _ in range(steps):
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grad_step(params, model, train))
    # The model as written before the two-line change: Flax's own nn.scan(nn.remat(...)).
    original_params, original_out = _with_flax_scan(lambda: (
        jax.eval_shape(model.init, jax.random.key(0), clean),
        jax.jit(lambda v, t: model.apply(v, t))({"params": params}, clean)))
    apply = hooked_apply(model)
    out, logits, _ = exercise(lambda v, t: apply(v, t), ({"params": params},), clean, corrupt,
                              resid="layers.{l}.hook_out", mlp="layers.{l}.mlp_out.hook_out",
                              n_layers=model.cfg.n_layers, tokens=(1, 2), axes=AXES)
    out["param_tree_equals_original"] = (
        jax.tree.map(jnp.shape, original_params["params"]) == jax.tree.map(jnp.shape, params))
    out["output_vs_original_max_abs"] = float(jnp.abs(original_out - logits).max())
    return out


def _with_flax_scan(fn):
    """``fn()`` with the linen model as written before the two-line change."""
    lifted = linen_model.jl
    linen_model.jl = nn  # nn.scan / nn.remat have the same names and arguments
    try:
        return fn()
    finally:
        linen_model.jl = lifted


def run_equinox(steps: int = 3) -> dict:
    model, optimizer, opt_state = eqx_model.make(0)
    train, clean, corrupt = data(model.token_embed.num_embeddings)
    for _ in range(steps):
        model, opt_state, _ = eqx_model.train_step(model, opt_state, train, optimizer)
    hooked = tag_submodules(model)  # every submodule, inputs and outputs

    def batched(m, t):  # the loss's own batching: a vmap inside the hooked function
        return jax.vmap(m)(t)

    names = ["token_embed.hook_out", "blocks.0.attn.query_proj.hook_out", "blocks.1.mlp.hook_out"]

    def shapes(args, tokens):  # hooks under the model's own vmap see whole sequences
        return ji.run_with_cache(batched, *args, tokens, names=names)[1]

    out, _, cache = exercise(batched, (hooked,), clean, corrupt, resid="blocks.{l}.hook_out",
                             mlp="blocks.{l}.mlp.hook_out", n_layers=len(model.blocks),
                             tokens=(1, 2), axes=AXES, extra=shapes)
    out["shapes_under_the_models_vmap"] = {n: list(cache[n].shape) for n in names}
    # Training goes on with the model itself (the optimiser state has its structure); the
    # tagged copy shares its arrays, and untag gives the model's structure back.
    out["untag_restores_structure"] = jax.tree.structure(untag_eqx(hooked)) == jax.tree.structure(model)
    return out


def main(out_dir: str = "runs/interop") -> dict:
    results = {"nnx": run_nnx(), "linen_scan_remat": run_linen(), "equinox": run_equinox()}
    for name, r in results.items():
        print(f"\n{name}: {r['hooks']} hook points; sweep of {r['cache_shape'][0]} layers x "
              f"{len(r['restored_fraction'][0])} positions in {r['sweep_traces']} trace, equals "
              f"single patches to {r['sweep_vs_single_max_abs']:.1e}; gradient {r['grad_vs_finite_difference'][0]:.4f} "
              f"vs finite difference {r['grad_vs_finite_difference'][1]:.4f}; {r['seconds']} s")
        for layer, row in enumerate(r["restored_fraction"]):
            print(f"  layer {layer}: " + " ".join(f"{v:6.2f}" for v in row))
    path = pathlib.Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
