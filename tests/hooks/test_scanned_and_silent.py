"""Hooks in other people's JAX code (issue 14): each failure found there, one test each.

Scanned and rematerialised Flax layers, idiomatic Equinox under the default bridge,
patterns and indices that silently missed, NNX copies that drifted, errors that did not
say what to do. Models are a few Dense layers, so each test runs in about a second.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxinterp as ji
from jaxinterp.hooks import NestedTraceError
from jaxinterp.hooks import flax_lifted as jl
from jaxinterp.hooks import nnx_lifted as jnnx
from jaxinterp.hooks.equinox_bridge import tag_submodules
from jaxinterp.hooks.flax_bridge import hooked_apply
from jaxinterp.hooks.nnx_bridge import tag_nnx_submodules, untag

D = 4


def close(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-6)


# 1. nn.scan and nn.remat ---------------------------------------------------------------


class Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return x + ji.hook("hook_mid", nn.Dense(D, name="up")(x)), None


def stack(scan, remat):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x, _ = scan(remat(Layer), variable_axes={"params": 0}, split_rngs={"params": True},
                        length=3)(name="layers")(x, None)
            return nn.Dense(D, name="ln_f")(x)

    return Net()


@pytest.fixture(scope="module")
def linen():
    x = jax.random.normal(jax.random.key(0), (2, D))
    flax_net, ours = stack(nn.scan, nn.remat), stack(jl.scan, jl.remat)
    return flax_net, ours, flax_net.init(jax.random.key(1), x), x


def test_flax_scan_skips_unrequested_hooks_and_names_the_fix_for_requested_ones(linen):
    flax_net, _, variables, x = linen
    apply = hooked_apply(flax_net)
    _, cache = ji.run_with_cache(apply, variables, x, names="ln_f.hook_out")  # raised before
    close(cache["ln_f.hook_out"], flax_net.apply(variables, x))
    with pytest.raises(NestedTraceError, match=r"inside nn\.(scan|remat).*flax_lifted"):
        ji.run_with_cache(apply, variables, x, names="layers.up.hook_out")


def test_drop_in_scan_and_remat_keep_params_and_outputs_and_name_each_layer(linen):
    flax_net, ours, variables, x = linen
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    close(ours.apply(variables, x), flax_net.apply(variables, x))
    apply = hooked_apply(ours)
    out, cache = jax.jit(lambda v, a: ji.run_with_cache(apply, v, a, names="layers.{l}.**"))(variables, x)
    assert list(cache) == [f"layers.{l}.{n}" for l in range(3) for n in
                           ("hook_in", "up.hook_in", "up.hook_out", "hook_mid", "hook_out")]
    w = variables["params"]["layers"]["up"]
    first = x @ w["kernel"][0] + w["bias"][0]
    close(cache["layers.0.hook_mid"], first)
    close(cache["layers.1.hook_in"], x + first)
    close(cache.stacked("layers.*.hook_out")[-1], cache["layers.2.hook_out"])
    # One traced sweep over layers equals single patches; gradients flow through the remat.
    sweep = jax.jit(jax.vmap(lambda l: ji.run_with_hooks(
        apply, variables, x, interventions=[ji.patch("layers.{l}.hook_mid", 0.0, layer=l)])))(jnp.arange(3))
    for l in range(3):
        close(sweep[l], ji.run_with_hooks(apply, variables, x,
                                          interventions=[ji.patch(f"layers.{l}.hook_mid", 0.0)]))
    grad = jax.grad(lambda v: ji.run_with_cache(apply, v, x, names="layers.1.hook_mid")[1][
        "layers.1.hook_mid"].sum())(variables)["params"]["layers"]["up"]["bias"]
    n = x.shape[0]  # d/d bias: layer 1's directly, layer 0's through layer 1, layer 2's not at all
    close(grad, jnp.stack([n * w["kernel"][1].sum(1), jnp.full(D, n), jnp.zeros(D)]), atol=1e-5)


def test_remat_alone_carries_values_out(linen):
    class One(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jl.remat(Layer)(name="block")(x, None)[0]

    model = One()
    v = model.init(jax.random.key(2), linen[3])
    _, cache = ji.run_with_cache(hooked_apply(model), v, linen[3], names=["block.hook_out", "hook_mid"])
    assert list(cache) == ["hook_mid", "block.hook_out"]
    zeroed = ji.run_with_hooks(model.apply, v, linen[3], interventions=[ji.patch("hook_mid", 0.0)])
    close(zeroed, linen[3])
    # Plain JAX: ji.remat for jax.checkpoint.
    f = ji.remat(lambda a: ji.hook("inner", jnp.sin(a)) * 2)
    close(jax.grad(lambda a: ji.run_with_cache(f, a, names="inner")[1]["inner"].sum())(linen[3]),
          jnp.cos(linen[3]))


def test_nnx_remat_and_scan_drop_ins():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(D, D, rngs=rngs)

        def __call__(self, x):
            return x + self.lin(x)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([Block(rngs) for _ in range(2)])

            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return Block(rngs)

            self.stack = create(rngs)

        def __call__(self, x):
            for layer in self.layers:
                x = jnnx.remat(layer)(x)  # was nnx.remat(layer)(x)
            return jnnx.scan(lambda c, b: b(c), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.stack)

    model = tag_nnx_submodules(Net(nnx.Rngs(1)))
    x = jnp.ones((2, D))
    _, cache = ji.run_with_cache(model, x, names=["layers.{l}.lin.hook_out", "stack.{l}.hook_out"])
    assert list(cache) == ["layers.0.lin.hook_out", "layers.1.lin.hook_out", "stack.0.hook_out",
                           "stack.1.hook_out", "stack.2.hook_out"]
    untag(model)
    close(cache["layers.0.lin.hook_out"], model.layers[0].lin(x))
    close(cache["layers.1.lin.hook_out"], model.layers[1].lin(model.layers[0](x)))
    close(cache["stack.2.hook_out"], model(x))
    with pytest.raises(NestedTraceError, match=r"inside nnx\.remat.*nnx_lifted\.remat"):
        ji.run_with_cache(lambda a: nnx.remat(tag_nnx_submodules(model).layers[0])(a), x,
                          names="layers.0.lin.hook_out")


# 2. Idiomatic Equinox under the default bridge ----------------------------------------------


class EqxModel(eqx.Module):
    embed: eqx.nn.Embedding
    norm: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.embed, self.norm = eqx.nn.Embedding(10, D, key=k1), eqx.nn.LayerNorm(D)
        self.mlp = eqx.nn.MLP(D, D, 8, depth=1, key=k2)

    def __call__(self, tokens):  # one sequence [pos]
        x = jax.vmap(self.embed)(tokens)
        return x + jax.vmap(self.mlp)(jax.vmap(self.norm)(x))


def test_default_equinox_bridge_on_vmapped_layers_and_a_vmapping_loss():
    model = EqxModel(jax.random.key(0))
    hooked = tag_submodules(model)  # every submodule
    tokens = jnp.array([[1, 2, 3], [4, 5, 6]])
    _, cache = ji.run_with_cache(hooked, tokens[0])  # raised at embed.hook_out before
    close(cache["embed.hook_out"], model.embed.weight[tokens[0]])
    close(cache["mlp.hook_out"], jax.vmap(model.mlp)(jax.vmap(model.norm)(cache["embed.hook_out"])))

    def loss_fn(m, toks):  # vmaps internally; the hooks see the batch first
        return jnp.mean(jax.vmap(m)(toks) ** 2)

    loss, cache = ji.run_with_cache(loss_fn, hooked, tokens, names="mlp.hook_out")
    assert cache["mlp.hook_out"].shape == (2, 3, D)
    ablated = ji.run_with_hooks(loss_fn, hooked, tokens, interventions=[ji.patch("mlp.hook_out", 0.0)])
    close(ablated, jnp.mean(model.embed.weight[tokens] ** 2))
    assert not np.isclose(float(loss), float(ablated))


# 3. Silent misses ----------------------------------------------------------------------------


def twelve_layers(x):
    for i in range(12):
        with ji.layer_scope("blocks", i):
            x = ji.hook("hook_out", x + 1.0)
            x = ji.hook("attn.hook_out", x * 1.0)
    return x


def test_question_mark_that_would_skip_layers_ten_and_eleven_is_an_error():
    x = jnp.zeros(2)
    with pytest.raises(ji.HookNameError, match=r"misses blocks\.10\.hook_out, blocks\.11\.hook_out.*blocks\.\{l\}"):
        ji.run_with_hooks(twelve_layers, x, interventions=[ji.patch("blocks.?.hook_out", 0.0, layer=3)])
    with pytest.raises(ji.HookNameError, match="blocks.10"):
        ji.run_with_cache(twelve_layers, x, names="blocks.?.hook_out")
    _, cache = ji.run_with_cache(twelve_layers, x, names="blocks.{l}.hook_out")
    assert len(cache) == 12 and "blocks.11.hook_out" in cache


def test_star_stays_inside_one_part_and_layer_hits_one_hook():
    x = jnp.zeros(2)
    out = ji.run_with_hooks(twelve_layers, x, interventions=[ji.patch("blocks.*.hook_out", 0.0, layer=3)])
    close(out, jnp.full(2, 8.0))  # only blocks.3.hook_out, not blocks.3.attn.hook_out
    _, deep = ji.run_with_cache(twelve_layers, x, names="blocks.3.**")
    assert list(deep) == ["blocks.3.hook_out", "blocks.3.attn.hook_out"]
    with pytest.raises(ji.HookNameError, match=r"stops at dots.*\*\*"):
        ji.run_with_cache(twelve_layers, x, names="*.hook_out")


def test_layout_is_never_guessed_on_a_bridge_hook():
    attn = nnx.MultiHeadAttention(num_heads=2, in_features=D, decode=False, rngs=nnx.Rngs(0))
    model = tag_nnx_submodules(nnx.Sequential(attn))
    x = jax.random.normal(jax.random.key(0), (1, 3, D))
    q = "layers.0.query.hook_out"  # [batch, pos, head, d_head]
    with pytest.raises(ji.ShapeError, match="axes="):
        ji.run_with_hooks(model, x, interventions=[ji.patch(q, 0.0, pos=1)])
    _, got = ji.run_with_hooks(model, x, names=q, interventions=[
        ji.patch(q, 0.0, pos=1, axes=("batch", "pos", "head", "d_head"))])
    assert float(jnp.abs(got[q][:, 1]).max()) == 0 and float(jnp.abs(got[q][:, 0]).min()) > 0


def test_one_name_reached_twice_warns_and_layers_that_never_apply_are_named():
    def two_layers(x):
        for _ in range(2):
            x = ji.hook("hook_out", x + 1.0)  # no layer_scope: one name, twice
        return x

    with pytest.warns(UserWarning, match="'hook_out' \\(2 times\\).*layer_scope"):
        ji.run_with_cache(two_layers, jnp.zeros(2))
    with pytest.raises(ji.IndexRangeError, match=r"layer= \(traced\).*never applied"):
        jax.vmap(lambda l: ji.run_with_hooks(lambda a: ji.hook("flat", a), jnp.zeros(2), interventions=[
            ji.patch("flat", 1.0, layer=l)]))(jnp.arange(2))
    with pytest.warns(UserWarning, match="reaches only layer 3"):
        jax.vmap(lambda l: ji.run_with_hooks(twelve_layers, jnp.zeros(2), interventions=[
            ji.patch("blocks.3.hook_out", 1.0, layer=l)]))(jnp.arange(12))


# 4. NNX models kept in sync -----------------------------------------------------------------


def test_nnx_tags_in_place_so_training_the_model_never_drifts():
    model = nnx.Sequential(nnx.Linear(D, D, rngs=nnx.Rngs(0)), nnx.Linear(D, 2, rngs=nnx.Rngs(1)))
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(model))]
    tagged = tag_nnx_submodules(model)
    assert tagged is model and [p for p, _ in nnx.to_flat_state(nnx.state(model))] == paths
    x = jnp.ones((3, D))
    nnx.update(model, jax.tree.map(lambda v: v + 1.0, nnx.state(model, nnx.Param)))  # train in place
    out, cache = ji.run_with_cache(tagged, x, names="layers.1.hook_in")
    close(cache["layers.1.hook_in"], model.layers[0](x))
    untag(model)
    assert type(model.layers[0]) is nnx.Linear
    close(out, model(x))


# 5. Errors that say what to do --------------------------------------------------------------


def test_stacked_loop_layers_and_why_not():
    _, cache = ji.run_with_cache(twelve_layers, jnp.zeros(2), names=["blocks.*.hook_out", "blocks.0.attn.hook_out"])
    stacked = cache.stacked("blocks.*.hook_out")
    assert stacked.shape == (12, 2) and cache.layers("blocks.{l}.hook_out")[-1] == "blocks.11.hook_out"
    close(stacked[:, 0], jnp.arange(12) + 1.0)
    with pytest.raises(ji.HookNameError, match="several per-layer hooks"):
        cache.stacked("blocks.*.**")

    def ragged(x):
        for i in range(2):
            with ji.layer_scope("blocks", i):
                x = ji.hook("hook_out", jnp.concatenate([x, x]))
        return x

    with pytest.raises(ji.ShapeError, match=r"blocks.0.hook_out: \(4,\), blocks.1.hook_out: \(8,\)"):
        ji.run_with_cache(ragged, jnp.zeros(2))[1].stacked("blocks.*.hook_out")
