"""jaxinterp's hooks on Flax (linen, NNX) and Equinox models not written for jaxinterp.

Each model is ordinary library code with at most a ``ji.hook`` tag or two; the bridges
add hook points at every submodule output without touching the model at all.
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
from jaxinterp.hooks.equinox_bridge import Tagged, tag_submodules, untag
from jaxinterp.hooks.flax_bridge import hooked_apply, tag_nnx_submodules

B, P, D_IN, D = 3, 5, 4, 8


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def causal_mean(x):
    """A parameter-free stand-in for attention: position p sees the mean of 0..p."""
    return jnp.cumsum(x, axis=-2) / jnp.arange(1, x.shape[-2] + 1)[:, None]


# Flax linen -------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):  # [batch, pos, d]
        h = nn.gelu(nn.Dense(2 * D, name="up")(causal_mean(x)))
        h = ji.hook("hook_hidden", h)  # the one line added for jaxinterp
        return x + nn.Dense(D, name="down")(h)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(D, name="embed")(x)
        for i in range(2):
            with ji.layer_scope("blocks", i):  # names the tags blocks.{i}.hook_hidden
                x = LinenBlock(name=f"blocks_{i}")(x)
        return nn.Dense(2, name="head")(x)


@pytest.fixture(scope="module")
def linen():
    x = jax.random.normal(jax.random.key(0), (B, P, D_IN))
    model = LinenNet()
    return model, model.init(jax.random.key(1), x), x


def test_linen_bridge_matches_flax_capture_intermediates(linen):
    model, variables, x = linen
    apply = hooked_apply(model)
    names = ji.hook_names(apply, variables, x)
    assert names[:8] == ["hook_in", "embed.hook_in", "embed.hook_out", "blocks_0.hook_in",
                         "blocks_0.up.hook_in", "blocks_0.up.hook_out", "blocks.0.hook_hidden",
                         "blocks_0.down.hook_in"]
    assert names[-3:] == ["head.hook_in", "head.hook_out", "hook_out"] and len(names) == 20
    out, cache = jax.jit(lambda v, x: ji.run_with_cache(apply, v, x))(variables, x)
    ref, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    close(out, ref)
    close(cache["blocks_1.hook_out"], inter["blocks_1"]["__call__"][0])
    close(cache["blocks_0.up.hook_out"], inter["blocks_0"]["up"]["__call__"][0])
    close(cache["hook_out"], ref)
    close(cache["blocks_1.hook_in"], cache["blocks_0.hook_out"])  # the residual before block 1
    close(cache["hook_in"], x)
    assert set(cache) == set(names) and "blocks.1.hook_hidden" in cache  # edit + bridge


def test_linen_patch_and_vmapped_sweep(linen):
    model, variables, x = linen
    apply = hooked_apply(model)
    zero = ji.run_with_hooks(apply, variables, x, interventions=[ji.patch("blocks_1.hook_out", 0.0)])
    close(zero, jnp.broadcast_to(variables["params"]["head"]["bias"], zero.shape))
    x2 = x[::-1]  # the "clean" batch; patch its block-0 output into x at one position
    _, clean = ji.run_with_cache(apply, variables, x2, names="blocks_0.hook_out")

    def run(pos, scale):
        ivs = [ji.patch("blocks_0.hook_out", clean["blocks_0.hook_out"], pos=pos,
                        axes=("batch", "pos", "d_model")),
               ji.add("blocks.1.hook_hidden", jnp.ones(2 * D), scale=scale)]
        return ji.run_with_hooks(apply, variables, x, interventions=ivs)

    pos, scale = jnp.array([0, 2, 4, 4]), jnp.array([0.0, 0.0, 0.0, 1.0])
    swept = jax.jit(jax.vmap(run))(pos, scale)
    for i in range(4):
        close(swept[i], run(int(pos[i]), float(scale[i])))
    # Causal: patching position 2 leaves positions 0-1 alone and changes position 2.
    base = model.apply(variables, x)
    close(swept[1][:, :2], base[:, :2])
    assert not np.allclose(swept[1][:, 2], base[:, 2])
    by_layer = ji.run_with_hooks(apply, variables, x, interventions=[
        ji.patch("blocks_*.hook_out", 0.0, layer=1)])  # layer read from the name blocks_1
    close(by_layer, zero)
    all_pos = ji.run_with_hooks(apply, variables, x, interventions=[
        ji.patch("blocks_0.hook_out", clean["blocks_0.hook_out"])])
    close(all_pos, model.apply(variables, x2))


def test_linen_inner_jit_needs_inline_jit(linen):
    model, variables, x = linen
    apply = hooked_apply(model)
    fwd = jax.jit(lambda v, x: apply(v, x))
    with pytest.raises(NestedTraceError):
        ji.run_with_cache(fwd, variables, x, names="blocks_0.hook_out")
    _, cache = jax.jit(lambda v, x: ji.run_with_cache(fwd, v, x, names="blocks_0.hook_out",
                                                      inline_jit=True))(variables, x)
    _, ref = ji.run_with_cache(apply, variables, x, names="blocks_0.hook_out")
    close(cache["blocks_0.hook_out"], ref["blocks_0.hook_out"])
    jitted = nn.jit(LinenNet)()  # Flax's own lifted jit, with the model's ji.hook tags
    with pytest.raises(NestedTraceError):
        ji.run_with_cache(jitted.apply, variables, x)
    _, cache = jax.jit(lambda v, x: ji.run_with_cache(jitted.apply, v, x, inline_jit=True))(variables, x)
    assert list(cache) == ["blocks.0.hook_hidden", "blocks.1.hook_hidden"]


# Flax NNX -------------------------------------------------------------------------------


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Linear(D_IN, D, rngs=rngs)
        self.blocks = nnx.List([nnx.Sequential(nnx.Linear(D, D, rngs=rngs), nnx.gelu)
                                for _ in range(2)])
        self.head = nnx.Linear(D, 2, rngs=rngs)

    def __call__(self, x):
        x = ji.hook("hook_embed", self.embed(x))  # an edit; the blocks are tagged by the bridge
        for block in self.blocks:
            x = x + block(causal_mean(x))
        return self.head(x)


def test_nnx_edit_and_bridge(linen):
    x = linen[2]
    model = NNXNet(nnx.Rngs(0))
    before = model(x)
    hooked = tag_nnx_submodules(model, lambda name, m: name.count(".") == 2)  # blocks.{i}
    assert hooked is model and isinstance(model.blocks[0], nnx.Sequential)  # tagged in place
    out, cache = ji.run_with_cache(hooked, x)
    assert list(cache) == ["hook_embed", "blocks.0.hook_in", "blocks.0.hook_out", "blocks.1.hook_in",
                           "blocks.1.hook_out"]
    close(out, before)
    close(cache["blocks.0.hook_out"], model.blocks[0](causal_mean(cache["hook_embed"])))
    # layer= also selects by the layer number in a bridge's name, so layers can be vmapped.
    ablated = jax.vmap(lambda layer: ji.run_with_hooks(
        hooked, x, interventions=[ji.patch("blocks.*.hook_out", 0.0, layer=layer)]))(jnp.arange(2))
    for layer in range(2):
        one = ji.run_with_hooks(hooked, x, interventions=[ji.patch(f"blocks.{layer}.hook_out", 0.0)])
        close(ablated[layer], one)
    assert not np.allclose(ablated[0], ablated[1])
    with pytest.raises(ji.ShapeError, match="hook_embed"):
        ji.run_with_hooks(hooked, x, interventions=[ji.edit("hook_embed", lambda a, p: a[0])])


# Equinox ----------------------------------------------------------------------------------


class EqxBlock(eqx.Module):
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x):  # one example: [pos, d]
        h = jax.nn.gelu(jax.vmap(self.up)(causal_mean(x)))
        return x + jax.vmap(self.down)(ji.hook("hook_hidden", h))


class EqxNet(eqx.Module):
    embed: eqx.nn.Linear
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.embed = eqx.nn.Linear(D_IN, D, key=k[0])
        self.blocks = [EqxBlock(eqx.nn.Linear(D, 2 * D, key=k[i]), eqx.nn.Linear(2 * D, D, key=k[i + 2]))
                       for i in (1, 2)]
        self.head = eqx.nn.Linear(D, 2, key=k[4])

    def __call__(self, x):
        x = jax.vmap(self.embed)(x)
        for i, block in enumerate(self.blocks):
            with ji.layer_scope("blocks", i):
                x = block(x)
        return jax.vmap(self.head)(x)


@pytest.fixture(scope="module")
def eqx_net():
    return EqxNet(jax.random.key(2))


def test_equinox_per_example_cache_and_bridge(eqx_net, linen):
    xs = linen[2]
    hooked = tag_submodules(eqx_net, lambda name, m: isinstance(m, EqxBlock))
    assert isinstance(hooked.blocks[0], Tagged) and hooked.blocks[0].up.weight is eqx_net.blocks[0].up.weight
    outs, cache = jax.vmap(lambda x: ji.run_with_cache(hooked, x))(xs)
    assert list(cache) == ["blocks.0.hook_in", "blocks.0.hook_hidden", "blocks.0.hook_out",
                           "blocks.1.hook_in", "blocks.1.hook_hidden", "blocks.1.hook_out"]
    close(outs, jax.vmap(eqx_net)(xs))
    after0 = jax.vmap(eqx_net.blocks[0])(jax.vmap(jax.vmap(eqx_net.embed))(xs))
    close(cache["blocks.0.hook_out"], after0)
    assert cache["blocks.1.hook_hidden"].shape == (B, P, 2 * D)
    assert jax.tree.structure(untag(hooked)) == jax.tree.structure(eqx_net)
    # Every module, including the Linears the model calls under its own jax.vmap: the hook
    # sees the whole batch of positions.
    _, every = ji.run_with_cache(tag_submodules(eqx_net), xs[0], names="blocks.0.up.hook_out")
    close(every["blocks.0.up.hook_out"], jax.vmap(eqx_net.blocks[0].up)(
        causal_mean(jax.vmap(eqx_net.embed)(xs[0]))))
    fast = eqx.filter_jit(hooked)  # a user's jit around the model: inline it
    _, inlined = ji.run_with_cache(fast, xs[0], names="blocks.1.hook_out", inline_jit=True)
    close(inlined["blocks.1.hook_out"], cache["blocks.1.hook_out"][0])


def test_equinox_vmapped_interventions(eqx_net, linen):
    xs = linen[2]
    hooked = tag_submodules(eqx_net, lambda name, m: isinstance(m, EqxBlock))
    _, clean = ji.run_with_cache(hooked, xs[0], names="blocks.?.hook_out")

    def run(x, layer, pos):  # one example: patch block `layer`'s output at `pos` from xs[0]
        src = jnp.stack([clean["blocks.0.hook_out"], clean["blocks.1.hook_out"]])[layer]
        ivs = [ji.patch("blocks.*.hook_out", src, layer=layer, pos=pos, axes=("pos", "d_model"))]
        return ji.run_with_hooks(hooked, x, interventions=ivs)

    layers, positions = jnp.array([0, 0, 1]), jnp.array([1, 3, 2])
    swept = jax.jit(jax.vmap(jax.vmap(run, (0, None, None)), (None, 0, 0)))(xs, layers, positions)
    assert swept.shape == (3, B, P, 2)
    for i in range(3):
        close(swept[i], jax.vmap(run, (0, None, None))(xs, int(layers[i]), int(positions[i])))
    hidden = jax.vmap(lambda x, l: ji.run_with_hooks(
        eqx_net, x, interventions=[ji.patch("blocks.*.hook_hidden", 0.0, layer=l)]), (None, 0))(
        xs[0], jnp.arange(2))
    assert not np.allclose(hidden[0], hidden[1])
    close(hidden[1], ji.run_with_hooks(eqx_net, xs[0],
                                       interventions=[ji.patch("blocks.1.hook_hidden", 0.0)]))
