"""Every streamed feature statistic against a brute-force computation on a small case."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError, DataError, HookNameError, IndexRangeError, ShapeError
from jaxinterp.features import analysis as A
from jaxinterp.features import contexts as C
from jaxinterp.features.result import load_analysis
from jaxinterp.features.search import (
    feature_labels,
    features_by_token,
    features_for_text,
    peak_tokens,
    search_names,
    token_features,
)
from jaxinterp.sae import SAEConfig, init_sae

# max_new=5: windows of new contexts are built a few at a time (several rounds per chunk)
SETTINGS = A.AnalysisSettings(k=4, ctx=6, before=3, n_intervals=4, per_interval=2, n_bins=16,
                              max_active=24, skip_first=1, seed=3, max_new=5)
N_SEQ, POS, BATCH, D_SAE = 19, 12, 8, 24


@pytest.fixture(scope="module")
def case():
    cfg = ji.gpt2_config(d_model=16, n_layers=2, n_heads=2, d_vocab=30, n_ctx=POS)
    model = ji.init_transformer(cfg, jax.random.key(0))
    sae = init_sae(SAEConfig(d_in=16, d_sae=D_SAE, architecture="standard", hook_name="blocks.1.hook_resid_pre"),
                   jax.random.key(1))
    W_enc = jax.random.normal(jax.random.key(3), (16, D_SAE)) * 20.0  # activations of order 1
    sae = eqx.tree_at(lambda s: (s.W_enc, s.b_enc), sae, (W_enc, jnp.full(D_SAE, -1.5)))
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (N_SEQ, POS), 0, cfg.d_vocab))
    result = A.analyze_features(model, sae, tokens, batch_size=BATCH, settings=SETTINGS)
    acts = np.asarray(sae.encode(A.site_input(model, jnp.asarray(tokens), sae.cfg.hook_name)), np.float64)
    acts[:, :SETTINGS.skip_first] = 0.0
    return model, sae, tokens, result, acts


def test_density_mean_max_and_histogram(case):
    _, _, _, r, acts = case
    flat = acts.reshape(-1, D_SAE)
    n = N_SEQ * (POS - SETTINGS.skip_first)
    fires = (flat > 0).sum(0)
    assert 0.05 < fires.sum() / (n * D_SAE) < 0.6, "the case must be sparse but not empty"
    assert r.n_tokens == n and r.n_sequences == N_SEQ and r.meta["tokens_truncated"] == 0
    np.testing.assert_allclose(r.density, fires / n)
    np.testing.assert_allclose(r.mean_activation, flat.sum(0) / np.maximum(fires, 1), rtol=1e-5)
    np.testing.assert_allclose(r.max_activation, flat.max(0), rtol=1e-6)
    _, exponent = np.frexp(flat.max(0).astype(np.float32))
    np.testing.assert_array_equal(r.hist_range, np.ldexp(1.0, exponent))
    for s in range(D_SAE):
        a = flat[:, s][flat[:, s] > 0]
        want = np.bincount(np.floor(a * SETTINGS.n_bins / r.hist_range[s]).astype(int), minlength=SETTINGS.n_bins)
        np.testing.assert_array_equal(r.hist_counts[s], want)
    assert (r.max_activation >= r.hist_range / 2).all() and (r.max_activation < r.hist_range).all()


def test_top_contexts_with_windows(case):
    _, _, tokens, r, acts = case
    v = acts.max(1)                                       # [seq, s]
    for s in range(D_SAE):
        order = [int(i) for i in np.argsort(-v[:, s], kind="stable") if v[i, s] > 0][:SETTINGS.k]
        got = [int(i) for i in r.top["seq"][s] if i >= 0]
        assert got == order
        for j, seq in enumerate(order):
            start = int(np.clip(acts[seq, :, s].argmax() - SETTINGS.before, 0, POS - SETTINGS.ctx))
            assert r.top["start"][s, j] == start
            np.testing.assert_allclose(r.top["values"][s, j], v[seq, s], rtol=1e-6)
            np.testing.assert_allclose(r.top["acts"][s, j], acts[seq, start:start + SETTINGS.ctx, s], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(r.top["tokens"][s, j], tokens[seq, start:start + SETTINGS.ctx])


def test_interval_samples_equal_a_single_pass_over_the_final_intervals(case):
    """Each interval keeps the active tokens with the highest priorities among all tokens
    whose activation ends up in it (the range grew while streaming), windows around them."""
    _, _, tokens, r, acts = case
    B, per = SETTINGS.n_intervals, SETTINGS.per_interval
    token = np.arange(N_SEQ * POS).reshape(N_SEQ, POS)
    for s in range(D_SAE):
        prio = np.asarray(C.priorities(jnp.asarray(token), jnp.full(token.shape, s), SETTINGS.seed))
        interval = np.minimum(np.floor(acts[..., s] * B / r.hist_range[s]).astype(int), B - 1)
        for b in range(B):
            members = [(i, p) for i in range(N_SEQ) for p in range(POS) if acts[i, p, s] > 0 and interval[i, p] == b]
            want = sorted(sorted(members, key=lambda m: -prio[m])[:per])
            got = []
            for j in range(per):
                seq = int(r.intervals["seq"][s, b, j])
                if seq >= 0:
                    start = int(r.intervals["start"][s, b, j])
                    window = r.intervals["acts"][s, b, j]
                    pos = [start + q for q in range(SETTINGS.ctx) if np.isclose(window[q], r.intervals["values"][s, b, j])]
                    got.append((seq, pos[0]))
                    np.testing.assert_allclose(window, acts[seq, start:start + SETTINGS.ctx, s], rtol=1e-5, atol=1e-7)
            assert sorted(got) == want, (s, b)
        counts = np.bincount(interval[acts[..., s] > 0], minlength=B)
        np.testing.assert_array_equal(r.interval_counts[s], counts)


def test_cooccurrence_is_jaccard_of_firing_sets(case):
    _, _, _, r, acts = case
    fires = (acts.reshape(-1, D_SAE) > 0).astype(np.int64)
    counts = fires.T @ fires
    diag = np.diag(counts)
    jaccard = counts / np.maximum(diag[:, None] + diag[None, :] - counts, 1)
    np.fill_diagonal(jaccard, -1.0)
    m = r.cooccurrence["index"].shape[1]
    want = np.argsort(-jaccard, axis=1, kind="stable")[:, :m]
    want_j = np.take_along_axis(jaccard, want, 1)
    np.testing.assert_allclose(r.cooccurrence["jaccard"], np.where(np.take_along_axis(counts, want, 1) > 0, want_j, 0), rtol=1e-6)
    np.testing.assert_array_equal(r.cooccurrence["count"], np.take_along_axis(counts, want, 1))


def test_logit_effects_and_neighbours(case):
    model, sae, _, r, _ = case
    W_dec = np.asarray(sae.W_dec, np.float64)
    d = (W_dec - W_dec.mean(-1, keepdims=True)) * np.asarray(model.ln_final.w)[None]   # LayerNorm: centre, scale
    logits = d @ np.asarray(model.unembed_matrix, np.float64)
    k = r.logits["pos_index"].shape[1]
    np.testing.assert_array_equal(r.logits["pos_index"], np.argsort(-logits, 1, kind="stable")[:, :k])
    np.testing.assert_array_equal(r.logits["neg_index"], np.argsort(logits, 1, kind="stable")[:, :k])
    np.testing.assert_allclose(r.logits["pos_values"], -np.sort(-logits, 1)[:, :k], rtol=1e-4, atol=1e-6)
    for s in range(D_SAE):
        hist, _ = np.histogram(logits[s], bins=r.logits["hist_counts"].shape[1], range=(logits[s].min(), logits[s].max()))
        assert np.abs(r.logits["hist_counts"][s] - hist).sum() <= 2 and r.logits["hist_counts"][s].sum() == logits.shape[1]
    unit = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    m = r.neighbours["index"].shape[1]
    np.testing.assert_array_equal(r.neighbours["index"], np.argsort(-cos, 1, kind="stable")[:, :m])
    np.testing.assert_allclose(r.neighbours["cosine"], -np.sort(-cos, 1)[:, :m], rtol=1e-5)


def test_search_by_token_passage_and_name(case, tmp_path):
    model, sae, tokens, r, acts = case
    peaks = peak_tokens(r)
    s = int(np.argmax(r.density))
    token = int(peaks[s, 0])
    assert s in [f for f, _ in features_by_token(r, token, k=D_SAE)]
    passage = tokens[4]
    ranked = features_for_text(model, sae, passage)
    every_pos = sae.encode(A.site_input(model, jnp.asarray(passage[None]), sae.cfg.hook_name))[0]
    np.testing.assert_allclose(np.asarray(ranked.values), np.asarray(every_pos).max(0), rtol=1e-5, atol=1e-6)
    assert ranked.top(1)[0].index["feature"] == int(np.asarray(every_pos).max(0).argmax())
    _, index, values = token_features(model, sae, passage, k=3)
    assert (values[:, 0] >= values[:, 1]).all() and index.shape == (POS, 3)
    labels = feature_labels(r, lambda t: f"tok{t}")
    assert f"'tok{token}'" in labels[s]
    assert s in search_names(labels, f"TOK{token}'")
    back = load_analysis(r.save(tmp_path / "analysis"))
    np.testing.assert_array_equal(back.top["tokens"], r.top["tokens"])
    assert back.feature(-1)["index"] == D_SAE - 1


def test_bad_inputs(case):
    model, sae, tokens, r, _ = case
    with pytest.raises(IndexRangeError, match="24 features"):
        r.feature(D_SAE)
    with pytest.raises(DataError, match="empty"):
        A.analyze_features(model, sae, np.zeros((0, POS), np.int32))
    wide = init_sae(SAEConfig(d_in=32, d_sae=8, hook_name="blocks.1.hook_resid_pre"), jax.random.key(0))
    with pytest.raises(ShapeError, match="do not fit"):
        A.analyze_features(model, wide, tokens)
    elsewhere = init_sae(SAEConfig(d_in=16, d_sae=8, hook_name="blocks.7.hook_resid_pre"), jax.random.key(0))
    with pytest.raises(HookNameError, match="another model or site"):
        A.analyze_features(model, elsewhere, tokens)
    with pytest.raises(ConfigError, match="power of two"):
        A.analyze_features(model, sae, tokens, settings=A.AnalysisSettings(n_bins=48))


def test_topk_sparse_path_truncation_and_window_rounds(case):
    """A TopK SAE is encoded sparsely (never densely) and gives the dense analysis; a ReLU
    SAE with more active features than max_active keeps exact densities and reports the
    truncated tokens (windows a few at a time, SETTINGS.max_new, are checked by every test)."""
    model, sae, tokens, r, acts = case
    topk = init_sae(SAEConfig(d_in=16, d_sae=D_SAE, architecture="topk", k=3, hook_name=sae.cfg.hook_name),
                    jax.random.key(5))
    topk = eqx.tree_at(lambda s: s.W_enc, topk, sae.W_enc)
    got = A.analyze_features(model, topk, tokens, batch_size=BATCH, settings=SETTINGS, logits=False, neighbours=0)
    dense = np.array(topk.encode(A.site_input(model, jnp.asarray(tokens), sae.cfg.hook_name)))
    dense[:, :SETTINGS.skip_first] = 0
    np.testing.assert_allclose(got.density, (dense.reshape(-1, D_SAE) > 0).sum(0) / got.n_tokens)
    for s in range(D_SAE):
        for j, seq in enumerate(got.top["seq"][s]):
            if seq >= 0:
                start = got.top["start"][s, j]
                np.testing.assert_allclose(got.top["acts"][s, j], dense[seq, start:start + SETTINGS.ctx, s], rtol=1e-5)
    few = A.AnalysisSettings(**{**SETTINGS.__dict__, "max_active": 2})
    cut = A.analyze_features(model, sae, tokens, batch_size=BATCH, settings=few, logits=False, neighbours=0)
    assert cut.meta["tokens_truncated"] == int(((acts > 0).sum(-1) > 2).sum()) > 0
    np.testing.assert_allclose(cut.density, r.density)
