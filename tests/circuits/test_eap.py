"""Edge attribution against exact edge patching; circuits, faithfulness, export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import circuits
from jaxinterp.circuits._graph_forward import EdgeMix, graph_forward
from jaxinterp.circuits._probe import node_gradients
from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.interp import compare_attribution


def _tiny(preset):
    """A 2-layer model of the preset with perturbed weights (no zero biases or unit norms), a
    clean/corrupted pair, its graph and a metric."""
    kw = dict(d_model=16, n_layers=2, n_heads=4, d_vocab=20, n_ctx=8)
    cfg = {"gpt2": ji.gpt2_config(**kw), "neox": ji.neox_config(rotary_pct=0.5, **kw),
           "llama": ji.llama_config(n_key_value_heads=2, d_mlp=24, **kw),
           "no norm": ji.gpt2_config(normalization_type=None, **kw)}[preset]
    model = ji.init_transformer(cfg, jax.random.key(0))
    model = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(1), x.shape), model)
    clean = jax.random.randint(jax.random.key(2), (2, 6), 0, 20)
    metric = ji.logit_diff(jnp.array([1, 2]), jnp.array([3, 4]))
    return cfg, model, clean, clean.at[:, 2].set(7), circuits.Graph.from_config(cfg), metric


@pytest.mark.parametrize("preset", ["neox", "llama", "no norm"])  # LN + parallel; RMS + GQA + gated; an MLP
def test_graph_forward_is_the_model(preset):                         # gradient through W_in^T, not the norm
    """Unpatched, every-edge-clean and every-edge-corrupted runs equal the plain model's."""
    cfg, model, clean, corrupted, graph, metric = _tiny(preset)

    @jax.jit
    def runs(model, weight):
        logits, outputs = graph_forward(model, graph, clean)
        _, corrupt_out = graph_forward(model, graph, corrupted)
        mixed = jax.vmap(lambda w: graph_forward(model, graph, clean, mix=EdgeMix(w, corrupt_out))[0])(weight)
        slow = jax.grad(lambda d: metric(graph_forward(model, graph, clean, deltas=d)[0]).mean())(
            jnp.zeros((graph.n_dst,) + clean.shape + (cfg.d_model,)))
        return logits, outputs, mixed, slow, node_gradients(model, graph, clean, metric), model(clean), model(corrupted)

    weight = jnp.stack([jnp.ones(graph.valid.shape), jnp.zeros(graph.valid.shape)])
    logits, outputs, mixed, slow, (_, fast_outputs, fast), ref_clean, ref_corrupted = runs(model, weight)
    np.testing.assert_allclose(logits, ref_clean, atol=2e-5)
    np.testing.assert_allclose(mixed[0], ref_clean, atol=2e-5)
    np.testing.assert_allclose(mixed[1], ref_corrupted, atol=2e-5)
    # the fast route to node-input gradients (plain forward, then back through W^T and the norm)
    np.testing.assert_allclose(fast_outputs.expand(model), outputs, atol=2e-5)
    np.testing.assert_allclose(fast, slow, atol=2e-5)
    assert float(jnp.abs(slow).max()) > 0.1


@pytest.mark.parametrize("preset", ["gpt2", "neox", "llama", "no norm"])  # LN; LN + parallel; RMS + GQA +
def test_folded_scores_equal_the_direct_contraction(preset):                   # gated; the MLP through W_in^T
    """EAP and EAP-IG-inputs (stacked copies) fold the norm's Jacobian into their one
    contraction: equal to contracting the node-input gradients (checked against autodiff
    through the graph forward above) with the sources' output differences."""
    cfg, model, clean, corrupted, graph, metric = _tiny(preset)
    steps = 2

    @jax.jit
    def direct(model):
        _, clean_acts, g = node_gradients(model, graph, clean, metric)
        _, corrupt_acts, _ = node_gradients(model, graph, corrupted, metric)
        diff = (corrupt_acts - clean_acts).expand(model)
        a = (jnp.arange(steps) / steps)[:, None, None, None]
        x_clean, x_corrupt = clean_acts.embed, corrupt_acts.embed
        embed = (x_corrupt[None] + a * (x_clean - x_corrupt)[None]).reshape((-1,) + x_clean.shape[1:])
        _, _, g_ig = node_gradients(model, graph, clean, metric, input_embed=embed, copies=steps)  # mean over steps
        return [jnp.where(graph.valid, jnp.einsum("ubpd,vbpd->uv", diff, gv), 0.0) for gv in (g, g_ig)]

    expected = direct(model)
    for method, want in zip(("EAP", "EAP-IG-inputs"), expected, strict=True):
        got = circuits.edge_attribution(model, clean, corrupted, metric, method=method, steps=steps)
        assert float(jnp.abs(want).max()) > 1e-3
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, err_msg=method)


def test_graph_layout():
    g = circuits.Graph.from_config(ji.gpt2_config(d_model=16, n_layers=2, n_heads=2, d_vocab=10, n_ctx=4))
    assert g.src_names == ("input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1")
    assert g.dst_names[:7] == ("a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0")
    assert g.valid[g.src_index("a0.h1"), g.dst_index("m0")]  # an MLP reads its own layer's heads
    assert not g.valid[g.src_index("a0.h1"), g.dst_index("a0.h0<q>")]
    assert g.valid[:, g.dst_index("logits")].all()
    parallel = circuits.Graph.from_config(ji.neox_config(d_model=16, n_layers=2, n_heads=2, d_vocab=10,
                                                         n_ctx=4, rotary_pct=0.5))
    assert not parallel.valid[parallel.src_index("a0.h1"), parallel.dst_index("m0")]


def test_eap_is_exact_where_the_model_is_linear():
    """Without norms, the logits are linear in their inputs: EAP scores of edges into the
    logits equal exact patching."""
    cfg = ji.attn_only_config(n_layers=2, d_model=16, n_heads=2, d_vocab=20, n_ctx=8, normalization_type=None)
    model = ji.init_transformer(cfg, jax.random.key(3))
    model = jax.tree.map(lambda x: 5 * x, model)
    clean = jax.random.randint(jax.random.key(4), (3, 6), 0, 20)
    corrupted = clean.at[:, 1].set(3)
    metric = ji.logit_diff(jnp.array([1, 2, 3]), jnp.array([4, 5, 6]))
    eap = circuits.edge_attribution(model, clean, corrupted, metric, method="EAP")
    exact = circuits.exact_edge_scores(model, clean, corrupted, metric)
    col = eap.attrs["graph"].dst_index("logits")
    np.testing.assert_allclose(np.asarray(eap)[:, col], np.asarray(exact)[:, col], atol=1e-4)
    assert np.isclose(eap.attrs["clean"], exact.attrs["clean"], atol=1e-5)


def test_eap_tracks_exact_patching_on_ioi(ioi_small):
    model, data = ioi_small
    metric = ji.logit_diff(data.io, data.s)
    exact = circuits.exact_edge_scores(model, data.clean, data.corrupted, metric)
    valid = exact.attrs["graph"].valid
    assert exact.attrs["clean"] - exact.attrs["corrupted"] > 1.0  # the model does the task
    r = {}
    for method in circuits.METHODS:
        est = circuits.edge_attribution(model, data.clean, data.corrupted, metric, method=method, steps=3)
        r[method] = compare_attribution(np.asarray(exact)[valid], np.asarray(est)[valid])["pearson"]
        assert est.attrs["clean"] == pytest.approx(exact.attrs["clean"], abs=1e-4)
    assert r["EAP"] > 0.2 and r["EAP-IG-inputs"] > 0.8 and r["EAP-IG-activations"] > 0.6, r
    assert r["EAP-IG-inputs"] > r["EAP"]

    # circuits from the scores: faithfulness by exact edge patching
    scores = circuits.edge_attribution(model, data.clean, data.corrupted, metric, method="EAP-IG-inputs", steps=3)
    g = scores.attrs["graph"]
    full, empty = circuits.Circuit(g, g.valid), circuits.Circuit(g, np.zeros_like(g.valid))
    f = circuits.faithfulness(model, data.clean, data.corrupted, metric, [full, empty])
    np.testing.assert_allclose(f, [1.0, 0.0], atol=1e-4)
    top = circuits.top_n(scores, 20)
    assert top.n_edges == 20
    pruned = top.pruned()
    assert pruned.n_edges <= 20
    f_top, f_pruned = circuits.faithfulness(model, data.clean, data.corrupted, metric, [top, pruned])
    assert f_top == pytest.approx(f_pruned, abs=1e-4)  # pruning removes only edges that do nothing
    assert f_top > 0.5
    curve = circuits.faithfulness_curve(model, data.clean, data.corrupted, metric, scores, [5, 20, g.n_edges],
                                        selection="greedy")
    assert curve.values[-1] == pytest.approx(1.0, abs=1e-4)
    grown = circuits.greedy(scores, 10)
    assert grown.n_edges == 10 and grown.pruned().keep[:, -1].any()


def test_circuit_json_round_trip_and_bad_names(tmp_path):
    g = circuits.Graph.from_config(ji.gpt2_config(d_model=16, n_layers=2, n_heads=2, d_vocab=10, n_ctx=4))
    c = circuits.Circuit.from_edges(g, [("input", "a0.h1<k>"), ("a0.h1", "a1.h0<q>"), ("a1.h0", "logits"),
                                        ("a0.h0", "a1.h0<v>")])
    back = circuits.Circuit.from_json(c.to_json(tmp_path / "c.json"))
    assert back.graph == g and (back.keep == c.keep).all()
    assert c.pruned().n_edges == 3  # a0.h0 reads nothing of the clean run: its edge does nothing
    with pytest.raises(ConfigError, match="Unknown source node 'a0.h7'"):
        circuits.Circuit.from_edges(g, [("a0.h7", "logits")])
    with pytest.raises(ConfigError, match=r"Unknown destination node .a1.h0<g>.*a1.h0<q>"):
        circuits.Circuit.from_edges(g, [("input", "a1.h0<g>")])
    with pytest.raises(ConfigError, match="no edge a1.h0 -> a0.h0<q>"):
        circuits.Circuit.from_edges(g, [("a1.h0", "a0.h0<q>")])


def test_bad_inputs(ioi_small):
    model, data = ioi_small
    with pytest.raises(ConfigError, match="edge attribution method 'EAP-IG'"):
        circuits.edge_attribution(model, data.clean, data.corrupted, ji.logit_diff(data.io, data.s), method="EAP-IG")
    with pytest.raises(ShapeError, match="one shape"):
        circuits.edge_attribution(model, data.clean, data.corrupted[:, :-1], ji.logit_diff(data.io, data.s))
