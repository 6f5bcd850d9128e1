"""Composition scores against a dense computation and against TransformerLens."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.circuits import composition_scores
from jaxinterp.errors import ConfigError


def dense_scores(model, mode):
    W_Q, W_K, W_V, W_O = (np.asarray(x, np.float64) for x in ji.circuits.attention_weights(model))
    ov = W_V @ W_O
    qk = W_Q @ np.swapaxes(W_K, -1, -2)
    right = {"Q": qk, "K": np.swapaxes(qk, -1, -2), "V": ov}[mode]
    L, H = W_Q.shape[:2]
    out = np.zeros((L, H, L, H))
    for l1 in range(L):
        for h1 in range(H):
            for l2 in range(l1 + 1, L):
                for h2 in range(H):
                    a, b = ov[l1, h1], right[l2, h2]
                    out[l1, h1, l2, h2] = np.linalg.norm(a @ b) / np.linalg.norm(a) / np.linalg.norm(b)
    return out


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_matches_dense_both_methods(mode):
    cfg = ji.llama_config(d_model=32, n_layers=3, n_heads=4, n_key_value_heads=2, d_mlp=32, d_vocab=20, n_ctx=8)
    model = ji.init_transformer(cfg, jax.random.key(1))
    ref = dense_scores(model, mode)
    for method in ("pairs", "gram"):
        got = composition_scores(model, mode, method=method)
        assert got.axes == ("src_layer", "src_head", "dst_layer", "dst_head")
        np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-4, atol=1e-6)
    assert got.top(1)[0].label.count("->") == 1


def test_finds_the_k_composition_of_the_hand_built_induction_head(hand_model):
    k = composition_scores(hand_model, "K")
    assert k.top(1)[0].label == "L0H0 -> L1H0"  # previous-token head into the induction head's keys
    assert float(k.values[0, 0, 1, 0]) > 0.1
    q = composition_scores(hand_model, "Q")
    assert float(q.values[0, 0, 1, 0]) < 1e-6  # it writes to PREV, which the query does not read


def test_equals_transformer_lens():
    """Against TransformerLens's ``all_composition_scores`` on the same weights, recorded by
    ``data/make_tl_composition.py`` (the benchmark compares live, in one run)."""
    import equinox as eqx

    ref = np.load(Path(__file__).parent / "data" / "tl_composition.npz", allow_pickle=False)
    L, H, d, _ = ref["W_Q"].shape
    model = ji.init_transformer(ji.gpt2_config(d_model=d, n_layers=L, n_heads=H, d_vocab=30, n_ctx=8),
                                jax.random.key(2))
    model = eqx.tree_at(lambda m: (m.blocks.attn.W_Q, m.blocks.attn.W_K, m.blocks.attn.W_V, m.blocks.attn.W_O),
                        model, tuple(jnp.asarray(ref[k]) for k in ("W_Q", "W_K", "W_V", "W_O")))
    for mode in "QKV":
        np.testing.assert_allclose(np.asarray(composition_scores(model, mode)), ref[f"scores_{mode}"],
                                   rtol=1e-4, atol=1e-6)
    assert float(ref["scores_K"].max()) > 0.1  # a reference with something to match


def test_bad_inputs(hand_model):
    with pytest.raises(ConfigError, match="composition mode 'q'"):
        composition_scores(hand_model, "q")
    one_layer = ji.init_transformer(ji.attn_only_config(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=4),
                                    jax.random.key(0))
    with pytest.raises(ConfigError, match="at least 2 layers"):
        composition_scores(one_layer, "K")


@pytest.mark.parametrize("mode", ["K", "V"])
def test_rank_deficient_heads(mode):
    """A head whose W_V (and W_K) lose rank: the eigendecomposition whitening of "pairs"
    and the Grams of "gram" both still match the dense products."""
    import equinox as eqx

    cfg = ji.gpt2_config(d_model=32, n_layers=3, n_heads=2, d_vocab=20, n_ctx=8)
    model = ji.init_transformer(cfg, jax.random.key(3))
    attn = model.blocks.attn
    W_V = attn.W_V.at[0, 1, :, :3].set(0.0)
    W_K = attn.W_K.at[2, 0, :, 1:].set(0.0)
    model = eqx.tree_at(lambda m: (m.blocks.attn.W_V, m.blocks.attn.W_K), model, (W_V, W_K))
    ref = dense_scores(model, mode)
    for method in ("pairs", "gram"):
        got = np.asarray(composition_scores(model, mode, method=method))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6)


def test_compiler_options_a_jaxlib_rejects_fall_back(monkeypatch):
    """An XLA option the installed jaxlib does not know: the scores still come (default
    options), the same as before, and the rejection is remembered."""
    from jaxinterp.circuits import composition as comp

    cfg = ji.gpt2_config(d_model=16, n_layers=2, n_heads=2, d_vocab=10, n_ctx=4)
    model = ji.init_transformer(cfg, jax.random.key(4))
    monkeypatch.setattr(comp, "_CPU_OPTIONS", {**comp._CPU_OPTIONS, "gram": {"xla_cpu_no_such_option": ""}})
    monkeypatch.setattr(comp, "_OPTIONS_REJECTED", set())
    comp._program.cache_clear()
    try:
        got = composition_scores(model, "V", method="gram")
        assert "gram" in comp._OPTIONS_REJECTED or jax.default_backend() != "cpu"
    finally:
        comp._program.cache_clear()
    np.testing.assert_allclose(np.asarray(got), dense_scores(model, "V"), rtol=2e-4, atol=1e-6)


def test_gram_parts_side_by_side_equal_one_part(monkeypatch):
    """"gram" split over d_model blocks run at once (threads on CPU): the same scores as one
    part and as the dense products, for every way of dealing the blocks."""
    from jaxinterp.circuits import composition as comp

    cfg = ji.gpt2_config(d_model=192, n_layers=3, n_heads=4, d_vocab=20, n_ctx=8)  # 3 blocks of 64
    model = ji.init_transformer(cfg, jax.random.key(5))
    ref = dense_scores(model, "K")
    for parts in (1, 2):  # 2 parts of 3 blocks: one padded with -1
        monkeypatch.setattr(comp, "_cpu_parts", lambda parts=parts: parts)
        got = np.asarray(composition_scores(model, "K", method="gram"))
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6)
    assert comp._block_plan(6, 2).tolist() == [[5, 2, 1], [4, 3, 0]]  # 11 and 10 block pairs
    assert comp._block_plan(3, 2).tolist() == [[2, -1], [1, 0]]  # 3 and 3 pairs; -1: nothing
