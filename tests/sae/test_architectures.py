"""Every architecture's forward pass against a numpy reference, its gradients against a
dense reference written independently, TopK's sparse path against the dense one, and
the configuration errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sae_helpers import np_forward, randomised

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.sae import SAE, SAEConfig, init_sae, sae_loss

D_IN, D_SAE, K = 12, 40, 5


CONFIGS = {
    "standard": SAEConfig(D_IN, D_SAE, "relu"),
    "standard_plain_l1": SAEConfig(D_IN, D_SAE, "standard", l1_decoder_norm=False),
    "topk": SAEConfig(D_IN, D_SAE, "topk", k=K),
    "batchtopk": SAEConfig(D_IN, D_SAE, "batchtopk", k=K),
    "matryoshka": SAEConfig(D_IN, D_SAE, "matryoshka_batchtopk", k=K, matryoshka_widths=(8, 20)),
    "jumprelu_step": SAEConfig(D_IN, D_SAE, "jumprelu"),
    "jumprelu_tanh": SAEConfig(D_IN, D_SAE, "jumprelu", jumprelu_sparsity_loss="tanh"),
    "gated": SAEConfig(D_IN, D_SAE, "gated"),
    "transcoder_skip": SAEConfig(D_IN, D_SAE, "standard", d_out=7, skip_connection=True),
    "topk_transcoder": SAEConfig(D_IN, D_SAE, "topk", k=K, d_out=7),
}


def test_forward_matches_numpy() -> None:
    """Every architecture (one compiled program for all of them)."""
    saes = {name: randomised(cfg) for name, cfg in CONFIGS.items()}
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, 4, D_IN)), jnp.float32)  # any leading axes
    got = jax.jit(lambda ss, v: {n: (s.encode(v), s(v)) for n, s in ss.items()})(saes, x)
    for name, sae in saes.items():
        acts_ref, out_ref = np_forward(sae, np.asarray(x).reshape(-1, D_IN))
        acts, out = got[name]
        assert acts.shape == (3, 4, D_SAE) and (acts_ref > 0).any(), name
        np.testing.assert_allclose(np.asarray(acts).reshape(-1, D_SAE), acts_ref, atol=2e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(out).reshape(12, -1), out_ref, atol=2e-5, err_msg=name)


def reference_loss(sae: SAE, x, dead) -> jax.Array:
    """The training objective written densely and independently of jaxinterp.sae.losses."""
    cfg = sae.cfg
    xin = x - sae.b_dec if cfg.apply_b_dec_to_input else x
    norms = jnp.sqrt((sae.W_dec**2).sum(-1))
    w = norms if cfg.l1_decoder_norm else jnp.ones_like(norms)

    def mse(a, b):
        return ((a - b) ** 2).sum(-1).mean()

    if cfg.architecture == "gated":
        z = xin @ sae.W_enc
        gate = jax.nn.relu(z + sae.b_gate)
        acts = jnp.where(z + sae.b_gate > 0, jax.nn.relu(z * jnp.exp(sae.r_mag) + sae.b_mag), 0.0)
        out = acts @ sae.W_dec + sae.b_dec
        frozen = gate @ jax.lax.stop_gradient(sae.W_dec) + jax.lax.stop_gradient(sae.b_dec)
        return mse(out, x) + cfg.l1_coefficient * (gate * w).sum(-1).mean() + mse(frozen, x)
    pre = xin @ sae.W_enc + sae.b_enc
    if cfg.architecture == "standard":
        acts = jax.nn.relu(pre)
        return mse(acts @ sae.W_dec + sae.b_dec, x) + cfg.l1_coefficient * (acts * w).sum(-1).mean()
    if cfg.architecture == "topk":
        kth = jnp.sort(pre, axis=-1)[:, -cfg.k][:, None]
        acts = jnp.where(pre >= kth, jax.nn.relu(pre), 0.0)
        out = acts @ sae.W_dec + sae.b_dec
        k_aux = D_IN // 2
        masked = jnp.where(dead, pre, -jnp.inf)
        kth_aux = jnp.sort(masked, axis=-1)[:, -k_aux][:, None]
        aux_acts = jnp.where(dead & (masked >= kth_aux), jax.nn.relu(pre), 0.0)
        resid = jax.lax.stop_gradient(x - out)
        scale = jnp.minimum(dead.sum() / k_aux, 1.0)
        return mse(out, x) + cfg.aux_k_coefficient * scale * mse(aux_acts @ sae.W_dec, resid)
    raise AssertionError(cfg.architecture)


GRADIENT_CASES = (("standard", False), ("standard_plain_l1", False), ("gated", False), ("topk", True),
                  ("topk", False))


def test_gradients_match_a_dense_reference() -> None:
    """Ours (TopK: sparse and dense paths) against the reference, one compiled program."""
    saes = {name: randomised(CONFIGS[name]) for name, _ in GRADIENT_CASES}
    x = jnp.asarray(np.random.default_rng(8).normal(size=(16, D_IN)), jnp.float32)
    dead = jnp.asarray(np.arange(D_SAE) % 3 == 0)

    @jax.jit
    def both(ss):
        ours = {f"{n}-{sp}": jax.grad(lambda s, sp=sp: sae_loss(s, x, dead=dead, sparse=sp)[0])(ss[n])
                for n, sp in GRADIENT_CASES}
        ref = {n: jax.grad(lambda s: reference_loss(s, x, dead))(s) for n, s in ss.items()}
        return ours, ref

    ours, ref = both(saes)
    for name, sparse in GRADIENT_CASES:
        pairs = zip(jax.tree.leaves(ours[f"{name}-{sparse}"]), jax.tree.leaves(ref[name]), strict=True)
        for a, b in pairs:
            assert float(jnp.abs(b).max()) > 0, (name, sparse)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-5, rtol=1e-4,
                                       err_msg=f"{name} sparse={sparse}")


def test_topk_sparse_path_equals_dense_path_with_dead_latents() -> None:
    sae = randomised(SAEConfig(D_IN, D_SAE, "topk", k=K, d_out=None))
    x = jnp.asarray(np.random.default_rng(9).normal(size=(32, D_IN)), jnp.float32)
    dead = jnp.asarray(np.arange(D_SAE) < 30)  # more dead latents than k_aux
    outs = jax.jit(lambda s: {sp: jax.value_and_grad(lambda s_, sp=sp: sae_loss(s_, x, dead=dead, sparse=sp)[:2],
                                                     has_aux=True)(s) for sp in (True, False)})(sae)
    outs = {sp: (loss, metrics, grads) for sp, ((loss, metrics), grads) in outs.items()}
    for _, metrics, _ in outs.values():
        assert float(metrics["aux_loss"]) > 0
    np.testing.assert_allclose(outs[True][0], outs[False][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(outs[True][2]), jax.tree.leaves(outs[False][2]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_jumprelu_straight_through_gradients() -> None:
    """d loss / d threshold equals the rectangle-kernel formula, for both sparsity losses."""
    for mode in ("step", "tanh"):
        cfg = SAEConfig(D_IN, D_SAE, "jumprelu", jumprelu_sparsity_loss=mode, jumprelu_bandwidth=0.5)
        sae = randomised(cfg)
        x = np.random.default_rng(10).normal(size=(64, D_IN)).astype(np.float32)
        g = np.asarray(jax.jit(jax.grad(lambda s, v: sae_loss(s, v)[0]))(sae, x).threshold)
        W_enc, W_dec = np.asarray(sae.W_enc, np.float64), np.asarray(sae.W_dec, np.float64)
        b_enc, b_dec, t = (np.asarray(v, np.float64) for v in (sae.b_enc, sae.b_dec, sae.threshold))
        eps = cfg.jumprelu_bandwidth
        pre = (x - b_dec) @ W_enc + b_enc
        kern = (np.abs((pre - t) / eps) < 0.5).astype(np.float64)
        acts = np.where(pre > t, pre, 0.0)
        d_acts = (2 * ((acts @ W_dec + b_dec) - x) / len(x)) @ W_dec.T  # d mse / d acts
        norms = np.linalg.norm(W_dec, axis=1)
        if mode == "step":
            d_sparse, l0_part = 0.0, -(kern / eps).sum(0) / len(x)
        else:
            c = cfg.jumprelu_tanh_scale
            d_sparse = (1 - np.tanh(c * acts * norms) ** 2) * c * norms / len(x)
            l0_part = np.zeros(D_SAE)
        expect = -(t / eps * kern * (d_acts + cfg.l0_coefficient * d_sparse)).sum(0)
        expect = expect + cfg.l0_coefficient * l0_part
        assert np.abs(expect).max() > 0
        np.testing.assert_allclose(g, expect, atol=2e-5, rtol=1e-4)


def test_batchtopk_keeps_k_per_token_on_average_and_matryoshka_adds_prefix_losses() -> None:
    sae = randomised(CONFIGS["batchtopk"])
    x = jnp.asarray(np.random.default_rng(11).normal(size=(16, D_IN)), jnp.float32)
    loss, metrics, aux = jax.jit(sae_loss)(sae, x)
    assert float(metrics["l0"]) == pytest.approx(K)
    pre = np.asarray(jax.jit(lambda s, v: s.hidden_pre(v))(sae, x)).ravel()
    assert float(aux["min_pos"]) == pytest.approx(np.sort(pre)[-K * 16])
    mat = randomised(CONFIGS["matryoshka"])
    _, m_metrics, _ = jax.jit(sae_loss)(mat, x)
    acts, _ = np_forward(eqx.tree_at(lambda s: s.threshold, mat, jnp.full(D_SAE, -1e9)), np.asarray(x))
    kth = np.sort(np.maximum(acts, 0).ravel())[-K * 16]
    acts = np.where(acts >= kth, acts, 0)
    W, b, y = np.asarray(mat.W_dec, np.float64), np.asarray(mat.b_dec, np.float64), np.asarray(x)
    inner = sum((((acts[:, :w] @ W[:w] + b) - y) ** 2).sum(-1).mean() for w in (8, 20))
    assert float(m_metrics["aux_loss"]) == pytest.approx(inner, rel=1e-4)  # nothing dead: prefixes only


def test_folding_scale_and_decoder_norms_keeps_outputs() -> None:
    for name in ("standard", "jumprelu_step", "gated", "transcoder_skip"):
        sae = randomised(CONFIGS[name])
        x = jnp.asarray(np.random.default_rng(12).normal(size=(8, D_IN)), jnp.float32)
        s_out = 0.5 if sae.cfg.is_transcoder else 2.5  # an autoencoder has one scale
        scaled = sae.fold_input_scale(2.5, s_out)
        np.testing.assert_allclose(np.asarray(scaled(x)), np.asarray(sae(2.5 * x)) / s_out,
                                   rtol=2e-5, atol=2e-5)
        if not sae.cfg.is_transcoder:
            folded = sae.fold_decoder_norms()
            np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(sae(x)), rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(np.asarray(folded.decoder_norms), 1.0, rtol=1e-5)


def test_init_follows_the_recipes() -> None:
    topk = init_sae(SAEConfig(D_IN, D_SAE, "topk", k=K), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(topk.decoder_norms), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(topk.W_enc), np.asarray(topk.W_dec).T)
    april = init_sae(SAEConfig(D_IN, D_SAE, "standard"), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(april.decoder_norms), 0.1, rtol=1e-5)
    assert not april.cfg.unit_decoder and SAEConfig(D_IN, D_SAE, l1_decoder_norm=False).unit_decoder
    gated = init_sae(SAEConfig(D_IN, D_SAE, "gated"), jax.random.key(0))
    assert gated.b_enc is None and gated.r_mag.shape == (D_SAE,)


def test_bad_configs_and_inputs() -> None:
    with pytest.raises(ConfigError, match="k=50 is larger than d_sae=40"):
        SAEConfig(D_IN, D_SAE, "topk", k=50)
    with pytest.raises(ConfigError, match="Unknown SAE architecture 'relu2'"):
        SAEConfig(D_IN, D_SAE, "relu2")
    with pytest.raises(ConfigError, match="matryoshka_widths must increase"):
        SAEConfig(D_IN, D_SAE, "matryoshka_batchtopk", matryoshka_widths=(20, 10))
    with pytest.raises(ConfigError, match="d_sae must be a positive int"):
        SAEConfig(D_IN, 0)
    with pytest.raises(ConfigError, match="skip_connection is for transcoders"):
        SAEConfig(D_IN, D_SAE, skip_connection=True)
    sae = init_sae(SAEConfig(D_IN, D_SAE, hook_name="blocks.0.hook_resid_post"), jax.random.key(0))
    with pytest.raises(ShapeError, match=r"d_in=12\] \(site blocks.0.hook_resid_post\); got shape \(4, 16\)"):
        sae.encode(jnp.zeros((4, 16)))
    with pytest.raises(ShapeError, match="d_sae=40"):
        sae.decode(jnp.zeros((4, 12)))
