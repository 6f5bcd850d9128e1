"""Hook points and their transforms, on plain JAX functions and a tiny HookedTransformer."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import HookNameError, ShapeError
from jaxinterp.hooks import (
    Cache,
    Handler,
    NestedTraceError,
    add,
    edit,
    handler_scope,
    hook,
    hook_names,
    is_hooked,
    layer_scope,
    patch,
    run_with_cache,
    run_with_hooks,
    scan_layers,
)
from jaxinterp.models import gpt2_config, init_transformer

CFG = gpt2_config(d_model=32, n_layers=2, n_heads=4, d_vocab=50, n_ctx=16)
B, P, H, E, D, M = 2, 6, 4, 8, 32, 128


@pytest.fixture(scope="module")
def model():
    return init_transformer(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def toks():
    return jax.random.randint(jax.random.key(1), (B, P), 0, CFG.d_vocab)


@pytest.fixture(scope="module")
def clean(model, toks):
    return jax.jit(lambda m, t: run_with_cache(m, t))(model, toks)


def shapes(fn, *args, **kw):
    """The cache of ``run_with_cache(fn, *args)``, traced abstractly: names and shapes, no FLOPs."""
    return jax.eval_shape(lambda *a: run_with_cache(fn, *a, **kw)[1], *args)


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def mlp(x):
    """A plain JAX function with two hook points."""
    h = hook("hidden.hook_pre", x * 2.0)
    return hook("hidden.hook_post", jnp.tanh(h)).sum(-1)


class Counter(Handler):
    """Counts the hooks reached: an outer handler that sees every trace of the model."""

    def __init__(self):
        self.n = 0

    def handle(self, site, x, frames_above):
        self.n += 1
        return x


# Capture ------------------------------------------------------------------------------


def test_plain_function_capture_and_patch():
    x = jnp.arange(6.0).reshape(2, 3) / 6
    out, cache = run_with_cache(mlp, x)
    assert list(cache) == ["hidden.hook_pre", "hidden.hook_post"]
    close(cache["hidden.hook_post"], jnp.tanh(2 * x))
    assert mlp(x).shape == out.shape and not is_hooked("hidden.hook_pre")
    zeroed = run_with_hooks(mlp, x, interventions=[patch("hidden.hook_pre", 0.0)])
    close(zeroed, jnp.zeros(2))


def test_names_exact_wildcard_predicate(model, toks, clean):
    one = run_with_cache(model, toks, names="blocks.1.attn.hook_z")[1]
    assert list(one) == ["blocks.1.attn.hook_z"]
    close(one["blocks.1.attn.hook_z"], clean[1]["blocks.1.attn.hook_z"])
    resid = shapes(model, toks, names="blocks.*.hook_resid_post")
    assert list(resid) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    pat = shapes(model, toks, names=lambda n: n.endswith("hook_pattern"))
    assert list(pat) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    mixed = shapes(model, toks, names=["ln_final.hook_scale", "hook_embed", "blocks.1.mlp.*"])
    assert list(mixed) == ["hook_embed", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post",
                           "ln_final.hook_scale"]


def test_cache_names_shapes_and_order_follow_transformerlens(model, clean):
    logits, cache = clean
    assert isinstance(cache, Cache) and isinstance(cache, Mapping)
    assert list(cache) == model.hook_names()  # execution order, blocks.0.* before blocks.1.*
    expected = {
        "hook_embed": (B, P, D), "hook_pos_embed": (B, P, D),
        "blocks.0.hook_resid_pre": (B, P, D), "blocks.0.ln1.hook_scale": (B, P, 1),
        "blocks.0.attn.hook_q": (B, P, H, E), "blocks.0.attn.hook_attn_scores": (B, H, P, P),
        "blocks.0.attn.hook_pattern": (B, H, P, P), "blocks.0.attn.hook_z": (B, P, H, E),
        "blocks.0.attn.hook_result": (B, P, H, D), "blocks.1.mlp.hook_pre": (B, P, M),
        "blocks.1.mlp.hook_post": (B, P, M), "blocks.1.hook_resid_post": (B, P, D),
        "ln_final.hook_scale": (B, P, 1), "ln_final.hook_normalized": (B, P, D),
    }
    for name, shape in expected.items():
        assert cache[name].shape == shape, name
    close(cache["blocks.0.attn.hook_pattern"].sum(-1), 1.0)
    # The per-head results sum to the attention output (b_O is zero at init).
    close(cache["blocks.1.attn.hook_result"].sum(2), cache["blocks.1.hook_attn_out"])
    close(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
    assert logits.shape == (B, P, CFG.d_vocab)


def test_order_survives_jit_with_ten_plus_layers(toks):
    deep = init_transformer(CFG.replace(n_layers=11, attn_only=True), jax.random.key(3))
    names = ["ln_final.hook_scale", "blocks.*.hook_resid_post", "hook_embed"]
    eager = shapes(deep, toks, names=names)
    jitted = jax.jit(lambda m, t: run_with_cache(m, t, names=names))(deep, toks)[1]
    want = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(11)] + ["ln_final.hook_scale"]
    assert list(eager) == list(jitted) == want
    assert isinstance(jitted, Cache)
    assert list(jax.tree.map(jnp.zeros_like, jitted)) == want


def test_capture_inside_jit_grad_vmap(model, toks, clean):
    name = "blocks.0.hook_resid_post"
    _, jc = jax.jit(lambda m, t: run_with_cache(m, t, names=name))(model, toks)
    close(jc[name], clean[1][name])

    def via_cache(m):
        return jnp.sin(run_with_cache(m, toks, names=name)[1][name]).sum()

    def via_model(m):
        return jnp.sin(m(toks, stop_at_layer=1)).sum()

    def both(m):
        per_example = jax.vmap(lambda t: run_with_cache(m, t[None], names=name)[1][name][0])(toks)
        return jax.grad(via_cache)(m), jax.grad(via_model)(m), per_example

    g_cache, g_model, per_example = jax.jit(both)(model)
    for a, b in zip(jax.tree.leaves(g_cache), jax.tree.leaves(g_model), strict=True):
        close(a, b, atol=1e-6)
    assert float(jnp.abs(g_cache.blocks.attn.W_Q[0]).max()) > 0
    close(per_example, clean[1][name])




def test_hook_names_generic_and_model(model, toks):
    assert hook_names(mlp, jnp.ones((2, 3))) == ["hidden.hook_pre", "hidden.hook_post"]
    assert hook_names(model, toks) == model.hook_names()


# Interventions ------------------------------------------------------------------------


def test_patching_every_hook_with_itself_changes_nothing(model, toks, clean):
    logits, cache = clean
    ivs = [patch(name, value) for name, value in cache.items()]
    out, seen = run_with_hooks(model, toks, interventions=ivs, names=None)
    close(out, logits)
    for name, value in cache.items():
        close(seen[name], value)
    # hook_result alone: the model computes per-head results only when a transform asks.
    name = "blocks.1.attn.hook_result"
    close(run_with_hooks(model, toks, interventions=[patch(name, cache[name])]), logits)


def test_layer_pos_head_selection(model, toks, clean):
    cache = clean[1]
    z = cache["blocks.1.attn.hook_z"]
    _, got = run_with_hooks(model, toks, names="blocks.1.attn.hook_z",
                            interventions=[patch("blocks.*.attn.hook_z", 0.0, layer=1, pos=-1, head=2)])
    want = z.at[:, -1, 2].set(0.0)
    close(got["blocks.1.attn.hook_z"], want)
    x = jnp.ones((4, 3))  # a per-example [pos, d] activation: pos counts from the end too
    out = run_with_hooks(lambda a: hook("h", a), x, interventions=[patch("h", 5.0, pos=jnp.array([0, 2]), axes=("pos", "d"))])
    close(out[:, 0], jnp.array([5.0, 1.0, 5.0, 1.0]))


def test_vmapped_interventions_equal_one_by_one_and_compile_once(model, toks, clean):
    corrupt = jnp.flip(toks, axis=1)
    src = clean[1]
    traces = []

    def fwd(m, t):
        traces.append(1)
        return m(t)

    def run(layer, pos, head, scale):
        ivs = [
            patch("blocks.*.hook_resid_pre", jnp.stack([src["blocks.0.hook_resid_pre"],
                                                        src["blocks.1.hook_resid_pre"]])[layer],
                  layer=layer, pos=pos),
            patch("blocks.*.attn.hook_z", 0.0, layer=1 - layer, head=head),
            add("hook_embed", scale * src["hook_pos_embed"][0]),
        ]
        return run_with_hooks(fwd, model, corrupt, interventions=ivs)

    grid = [(lay, p, h, s) for lay in range(2) for p in (0, 3, 5) for h in (1, 3) for s in (0.0, 2.0)]
    args = [jnp.array(c) for c in zip(*grid, strict=True)]
    batched = jax.jit(jax.vmap(run))(*args)
    assert len(traces) == 1 and batched.shape == (len(grid), B, P, CFG.d_vocab)
    single = jax.jit(run)
    for i in range(0, len(grid), 5):
        close(batched[i], single(*(a[i] for a in args)))
    assert len(traces) == 2
    assert not np.allclose(batched[0], batched[1])  # the sweep's entries differ


def test_vmap_over_an_intervention_pytree(model, toks, clean):
    srcs = jnp.stack([clean[1]["blocks.0.hook_resid_pre"], jnp.zeros((B, P, D))])
    ivs = patch("blocks.*.hook_resid_pre", srcs, layer=jnp.array([0, 1]), pos=jnp.array([1, 4]))
    out = jax.vmap(lambda iv: run_with_hooks(model, jnp.flip(toks, 1), interventions=[iv]))(ivs)
    one = run_with_hooks(model, jnp.flip(toks, 1),
                         interventions=[patch("blocks.1.hook_resid_pre", 0.0, pos=4)])
    close(out[1], one)


def test_interventions_compose(model, toks, clean):
    name = "blocks.0.hook_resid_pre"
    v = jnp.linspace(-1, 1, D)
    double = edit(name, lambda x, p: x * p, 2.0)
    _, a = run_with_hooks(model, toks, interventions=[add(name, v), double], names=name)
    _, b = run_with_hooks(model, toks, interventions=[double, add(name, v)], names=name)
    close(a[name], 2 * (clean[1][name] + v))
    close(b[name], 2 * clean[1][name] + v)
    # An outer capture sees what an inner transform patched.
    inner = lambda t: run_with_hooks(model, t, interventions=[add(name, v)])  # noqa: E731
    _, outer = run_with_cache(inner, toks, names=[name, "blocks.0.hook_resid_post"])
    close(outer[name], clean[1][name] + v)
    assert not np.allclose(outer["blocks.0.hook_resid_post"], clean[1]["blocks.0.hook_resid_post"])


# Errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("names, ivs", [
    ("blocks.0.hook_resid_pree", []),
    (False, [patch("blocks.*.attn.hook_zz", 0.0)]),
    (["hook_embed", "blocks.2.hook_resid_pre"], []),
])
def test_unknown_model_hook_raises_before_tracing(model, toks, names, ivs):
    counter = Counter()
    with handler_scope(counter), pytest.raises(HookNameError, match="Nearest valid names: .*blocks"):
        run_with_hooks(model, toks, interventions=ivs, names=names)
    assert counter.n == 0


def test_unknown_generic_hook_raises_after_run():
    with pytest.raises(HookNameError, match="hidden.hook_post.*no hook with that name"):
        run_with_cache(mlp, jnp.ones((2, 3)), names="hidden.hook_posst")
    with pytest.raises(KeyError):  # HookNameError is a KeyError
        run_with_hooks(mlp, jnp.ones((2, 3)), interventions=[patch("nope", 0.0)])


def test_wrong_shapes_raise_shape_error(model, toks):
    bad = edit("blocks.*.mlp.hook_post", lambda x, p: x[..., :3])
    with pytest.raises(ShapeError, match=r"blocks.\{l\}.mlp.hook_post.*shape"):
        run_with_hooks(model, toks, interventions=[bad])
    with pytest.raises(ShapeError, match="does not broadcast"):
        run_with_hooks(model, toks, interventions=[patch("hook_embed", jnp.ones((3, D)))])
    with pytest.raises(ShapeError, match="no head axis"):
        run_with_hooks(model, toks, interventions=[patch("hook_embed", 0.0, head=1)])
    with pytest.raises(ShapeError, match="needs an array"):
        run_with_cache(lambda x: hook("pair", (x, x)), jnp.ones(2))


def test_nested_transforms_inside_name_the_transform_and_the_fix():
    x = jnp.ones((3, 2))
    for inner, where, fix in ((jax.jit(lambda a: mlp(a) + 1), "jax.jit", "inline_jit=True"),
                              (lambda a: jax.lax.scan(lambda c, r: (c, mlp(r)), 0.0, a)[1],
                               "lax.scan", "scan_layers"),
                              (jax.checkpoint(mlp), "jax.checkpoint", "ji.remat"),
                              (lambda a: jax.lax.cond(True, mlp, lambda b: b.sum(-1), a), "lax.cond",
                               "outside the branch")):
        with pytest.raises(NestedTraceError, match=f"inside {where}.*{fix}"):
            run_with_cache(inner, x, names="hidden.hook_post")
        with pytest.raises(NestedTraceError, match=where):  # everything, but nothing reachable
            run_with_cache(inner, x)
        out = run_with_hooks(inner, x, interventions=[])  # nobody asked: no error
        close(out, inner(x))
    # The model's own vmap: the transform sees the whole batch.
    _, cache = run_with_cache(jax.vmap(mlp), x)
    close(cache["hidden.hook_post"], jnp.tanh(2 * x))


def test_cached_inner_jit_is_reported_and_inline_jit_fixes_it(model, toks, clean):
    fwd = jax.jit(lambda m, t: m(t))
    fwd(model, toks)  # now cached: its hooks never run again
    with pytest.raises(HookNameError, match="inline_jit=True"):
        run_with_cache(fwd, model, toks, names="blocks.0.attn.hook_z")
    names = ["hook_embed", "blocks.*.attn.hook_pattern", "blocks.1.hook_resid_post"]

    def both(m, t):
        _, cache = run_with_cache(fwd, m, t, names=names, inline_jit=True)
        out = run_with_hooks(fwd, m, t, inline_jit=True,
                             interventions=[patch("blocks.*.hook_resid_pre", 0.0, layer=1, pos=2)])
        return out, cache

    out, cache = jax.jit(both)(model, toks)
    for name in cache:
        close(cache[name], clean[1][name])
    want = run_with_hooks(model, toks, interventions=[patch("blocks.1.hook_resid_pre", 0.0, pos=2)])
    close(out, want)
    prims = {e.primitive.name for e in jax.make_jaxpr(both)(model, toks).eqns}
    assert "scan" in prims and "pjit" not in prims  # inner jit inlined, layers still scanned


# Building blocks ------------------------------------------------------------------------


def test_scan_layers_and_layer_scope_on_a_plain_function():
    w = jnp.arange(1.0, 4.0)  # three "layers", each multiplies by w[l]

    def net(x, w):
        x = hook("hook_in", x)
        x, _ = scan_layers(lambda c, wl: hook("hook_out", c * wl), x, w, n_layers=3, prefix="layers")
        with layer_scope("extra", 0):
            return hook("hook_final", x + 1)

    out, cache = run_with_cache(net, jnp.ones(2), w, names=None)
    with jax.disable_jit():  # debugging mode: the scan runs as a Python loop, hooks still work
        _, debug = run_with_cache(net, jnp.ones(2), w, names="layers.*.hook_out")
    close(debug["layers.2.hook_out"], cache["layers.2.hook_out"])
    assert list(cache) == ["hook_in", "layers.0.hook_out", "layers.1.hook_out", "layers.2.hook_out",
                           "extra.0.hook_final"]
    close(cache["layers.1.hook_out"], jnp.full(2, 2.0))
    out2 = run_with_hooks(net, jnp.ones(2), w, interventions=[patch("layers.1.hook_out", 10.0)])
    close(out2, jnp.full(2, 31.0))
    close(out, jnp.full(2, 7.0))


def test_scan_layers_first_layer_keeps_model_wide_names():
    """A partial run over layers 2:4 of a model names its hooks blocks.2 and blocks.3."""
    w = jnp.array([2.0, 3.0])

    def tail(x, w):
        return scan_layers(lambda c, wl: hook("hook_out", c * wl), x, w, n_layers=2, first_layer=2)[0]

    out, cache = run_with_cache(tail, jnp.ones(2), w)
    assert list(cache) == ["blocks.2.hook_out", "blocks.3.hook_out"]
    close(cache["blocks.3.hook_out"], jnp.full(2, 6.0))
    patched = jax.vmap(lambda layer: run_with_hooks(
        tail, jnp.ones(2), w, interventions=[patch("blocks.*.hook_out", 1.0, layer=layer)]))(
        jnp.array([2, 3]))
    close(patched, jnp.array([[3.0, 3.0], [1.0, 1.0]]))
    with pytest.raises(HookNameError, match="blocks.2.hook_out"):
        run_with_cache(tail, jnp.ones(2), w, names="blocks.0.hook_out")
