"""The activation store (determinism, shuffling, aligned sites, disk cache, bounded memory,
errors), the metrics against brute force, and splicing into a model."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import DataError, HookNameError
from jaxinterp.sae import SAE, SAEConfig, init_sae
from jaxinterp.sae.metrics import density_histogram_png, evaluate_sae, spliced_loss
from jaxinterp.sae.splice import clamp, splice
from jaxinterp.sae.store import ActivationStore, site_activations

SITES = ["blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out"]


@pytest.fixture(scope="module")
def model():
    cfg = ji.gpt2_config(d_model=16, n_layers=1, n_heads=2, d_vocab=50, n_ctx=16, d_mlp=32)
    return ji.init_transformer(cfg, jax.random.key(0))


TOKENS = np.random.default_rng(0).integers(0, 50, (40, 16))


def test_store_batches_are_a_shuffle_of_the_activations(model, tmp_path: Path) -> None:
    store = ActivationStore(model, TOKENS, SITES, batch_size=64, buffer_tokens=512, model_batch=8,
                            seed=3, cache_dir=tmp_path)
    assert store.sites == {SITES[0]: 16, SITES[1]: 32, SITES[2]: 16}
    assert store.rows_per_generation == 512 and store.steps_per_generation == 8
    gen0 = [store(s) for s in range(8)]
    rows = np.concatenate([np.asarray(b[SITES[1]]) for b in gen0])
    direct = site_activations(model, TOKENS[(np.arange(32)) % 40], SITES[1])[SITES[1]]
    order = np.lexsort(rows.T[::-1])
    np.testing.assert_allclose(rows[order], direct[np.lexsort(direct.T[::-1])], atol=1e-6)
    assert not np.allclose(rows, direct)  # shuffled
    # rows stay aligned across sites: mlp_out is the MLP applied to that row's ln2 output
    b = gen0[0]
    mlp = model.blocks.mlp
    hidden = jax.nn.gelu(b[SITES[0]] @ mlp.W_in[0] + mlp.b_in[0], approximate=False)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(b[SITES[1]]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(b[SITES[1]] @ mlp.W_out[0] + mlp.b_out[0]),
                               np.asarray(b[SITES[2]]), atol=1e-4)
    # a function of the step: a fresh store (reading the disk cache) gives the same batches
    later = np.asarray(store(13)[SITES[2]])  # generation 1, written to the cache
    again = ActivationStore(model, TOKENS, SITES, batch_size=64, buffer_tokens=512, model_batch=8,
                            seed=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(again(13)[SITES[2]]), later)
    assert again.cached_generations == 1 and again.generation_seconds == 0.0
    assert all(v.shape[0] == 512 for v in store._buffer[1].values())  # memory: one generation


def test_store_reads_any_function_with_hook_tags() -> None:
    table = jnp.asarray(np.random.default_rng(2).normal(size=(50, 8)), jnp.float32)

    def fn(tokens):  # not a HookedTransformer: any JAX function with ji.hook tags
        x = ji.hook("embed", table[tokens])
        return ji.hook("squared", x**2).sum()

    store = ActivationStore(fn, TOKENS, ["embed", "squared"], batch_size=32, buffer_tokens=256)
    b = store(3)
    np.testing.assert_allclose(np.asarray(b["squared"]), np.asarray(b["embed"]) ** 2, rtol=1e-6)


def test_store_errors(model) -> None:
    with pytest.raises(HookNameError, match="blocks.0.mlp.hook_post"):
        ActivationStore(model, TOKENS, "blocks.0.mlp.hook_pots", batch_size=64)
    broken = jax.tree.map(lambda x: x, model)
    broken = ji.HookedTransformer(**{**vars(broken), "W_E": broken.W_E.at[3].set(jnp.nan)})
    store = ActivationStore(broken, np.full((8, 16), 3), SITES[1], batch_size=64, buffer_tokens=128)
    with pytest.raises(DataError, match="Non-finite activations at 'blocks.0.mlp.hook_post'"):
        store(0)


def perfect_sae(d: int, hook: str) -> SAE:
    """relu(x) - relu(-x) = x: an exact 'SAE' with latents [x+, x-]."""
    cfg = SAEConfig(d, 2 * d, "standard", apply_b_dec_to_input=False, hook_name=hook)
    eye = jnp.eye(d)
    sae = init_sae(cfg, jax.random.key(0))
    return SAE(cfg=cfg, W_enc=jnp.concatenate([eye, -eye], 1), b_enc=jnp.zeros(2 * d),
               W_dec=jnp.concatenate([eye, -eye], 0), b_dec=jnp.zeros(d), threshold=sae.threshold)


def test_evaluate_sae_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    sae = init_sae(SAEConfig(6, 20, "topk", k=3), jax.random.key(2))
    got = evaluate_sae(sae, [x[:150], x[150:]])  # statistics summed over chunks
    acts, out = np.asarray(sae.encode(x), np.float64), np.asarray(sae(x), np.float64)
    err = ((x - out) ** 2).sum(1)
    assert got["l0"] == pytest.approx((acts > 0).sum(1).mean())
    assert got["mse"] == pytest.approx(err.mean(), rel=1e-5)
    assert got["fve"] == pytest.approx(1 - err.sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)
    cos = (x * out).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(out, axis=1)
    assert got["cosine"] == pytest.approx(cos.mean(), rel=1e-5)
    assert got["shrinkage"] == pytest.approx((np.linalg.norm(out, axis=1) / np.linalg.norm(x, axis=1)).mean(), rel=1e-5)
    density = (acts > 0).mean(0)
    np.testing.assert_allclose(got["density"], density)
    assert got["dead_frac"] == pytest.approx((density == 0).mean())
    assert got["dense_frac"] == pytest.approx((density > 0.1).mean())
    perfect = evaluate_sae(perfect_sae(6, ""), [x])
    assert perfect["fve"] == pytest.approx(1.0) and perfect["cosine"] == pytest.approx(1.0)


def test_spliced_loss_and_splicing(model, tmp_path: Path) -> None:
    site = "blocks.0.hook_mlp_out"
    tokens = [TOKENS[:8], TOKENS[8:16]]
    exact = spliced_loss(model, tokens, perfect_sae(16, site))
    assert exact["kl"] < 1e-8 and exact["ce_sae"] == pytest.approx(exact["ce_clean"], abs=1e-5)
    assert exact["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    zero = SAE(**{**vars(perfect_sae(16, site)), "W_dec": jnp.zeros((32, 16))})
    ablated = spliced_loss(model, tokens, zero)
    assert ablated["ce_sae"] == pytest.approx(ablated["ce_zero_ablation"], abs=1e-5)
    assert ablated["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-3)
    # keeping the error term leaves the model unchanged; clamping a latent moves it
    sae = init_sae(SAEConfig(16, 32, "relu", hook_name=site), jax.random.key(1))
    toks = jnp.asarray(TOKENS[:4])
    clean = model(toks)

    @jax.jit
    def steer(m, s, values):  # value 0 and 10 for latent 5, one vmapped program
        return jax.vmap(lambda v: ji.run_with_hooks(m, toks, interventions=splice(
            s, keep_error=True, edit_fn=clamp, edit_params={"index": 5, "value": v})))(values)

    steered = steer(model, sae, jnp.asarray([0.0, 10.0]))
    assert float(jnp.abs(steered[1] - steered[0]).max()) > 1e-2
    keep = jax.jit(lambda m, s: ji.run_with_hooks(m, toks, interventions=splice(s, keep_error=True)))
    np.testing.assert_allclose(np.asarray(keep(model, sae)), np.asarray(clean), atol=1e-4)
    # a transcoder reads one site and writes another
    tc = init_sae(SAEConfig(16, 32, "relu", d_out=16, hook_name="blocks.0.ln2.hook_normalized",
                            hook_name_out=site), jax.random.key(2))
    _, cache = jax.jit(lambda m, t: ji.run_with_hooks(m, toks, interventions=splice(t),
                                                       names=[t.cfg.hook_name, site]))(model, tc)
    np.testing.assert_allclose(np.asarray(cache[site]), np.asarray(tc(cache[tc.cfg.hook_name])), atol=1e-5)
    path = density_histogram_png(np.array([0, 1e-4, 1e-2, 0.5]), tmp_path / "d.png", title="t")
    assert path.stat().st_size > 1000
