"""Interventions never hit a site other than the one named: indices as in Python, checked.

The cases a new user met on the old main (each silently hit the wrong site there):
``pos=40`` on 16 tokens acted at position 8, ``head=9`` on 4 heads at head 1,
``layer=5`` on 2 layers did nothing, ``layer=-1`` did nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji

CFG = ji.gpt2_config(d_model=64, n_layers=2, n_heads=4, d_vocab=256, n_ctx=64)


@pytest.fixture(scope="module")
def env():
    model = ji.init_transformer(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, CFG.d_vocab)
    return model, tokens, model(tokens)


def run(env, **kw):
    model, tokens, _ = env
    return ji.run_with_hooks(model, tokens, interventions=[ji.patch("blocks.*.hook_resid_pre", 0.0, **kw)])


def test_concrete_out_of_range_raises_instead_of_wrapping(env):
    with pytest.raises(ji.IndexRangeError, match="position 40 .* -16..15"):
        run(env, layer=0, pos=40)
    with pytest.raises(ji.IndexRangeError, match="head 9"):
        ji.run_with_hooks(env[0], env[1], interventions=[ji.patch("blocks.*.attn.hook_z", 0.0, layer=0, head=9)])
    with pytest.raises(ji.IndexRangeError, match="layer 5"):
        run(env, layer=5)


def test_negative_indices_are_pythons(env):
    np.testing.assert_array_equal(run(env, layer=-1), run(env, layer=1))
    np.testing.assert_array_equal(run(env, layer=0, pos=-1), run(env, layer=0, pos=15))
    assert not np.allclose(run(env, layer=-1), env[2])  # it does act
    z = ji.run_with_hooks(env[0], env[1], names="blocks.1.attn.hook_z",
                          interventions=[ji.patch("blocks.*.attn.hook_z", 0.0, layer=-1, head=-1)])[1]
    got = z["blocks.1.attn.hook_z"]
    assert np.all(np.asarray(got[:, :, 3]) == 0) and np.all(np.abs(np.asarray(got[:, :, :3])).sum((0, 1, 3)) > 0)


def test_traced_indices_select_nothing_out_of_range_and_count_negatives(env):
    model, tokens, base = env

    def one(m, layer, pos):
        return ji.run_with_hooks(m, tokens, interventions=[ji.patch("blocks.*.hook_resid_pre", 0.0,
                                                                    layer=layer, pos=pos)])

    out = jax.jit(jax.vmap(one, (None, 0, 0)))(model, jnp.array([0, -1, 1, 7]), jnp.array([40, -1, 15, 2]))
    np.testing.assert_allclose(out[0], base, atol=1e-5)      # pos 40: no site, no change
    np.testing.assert_allclose(out[1], out[2], atol=1e-6)    # layer -1, pos -1 == layer 1, pos 15
    np.testing.assert_allclose(out[3], base, atol=1e-5)      # layer 7: no site
    eager = run(env, layer=1, pos=15)
    np.testing.assert_allclose(out[2], eager, atol=1e-5)


def test_checked_mode_reports_traced_out_of_range(env):
    model, tokens, _ = env

    def one(m, layer, pos, head):
        return ji.run_with_hooks(m, tokens, interventions=[
            ji.patch("blocks.*.attn.hook_z", 0.0, layer=layer, pos=pos, head=head)])

    checked = ji.checked(jax.vmap(one, (None, 0, 0, 0)))
    ok = checked(model, jnp.array([0, 1]), jnp.array([3, -16]), jnp.array([0, -4]))
    assert ok.shape == (2, 2, 16, CFG.d_vocab)
    with pytest.raises(ji.IndexRangeError, match=r"position out of range .*\(size 16\)"):
        checked(model, jnp.array([0, 1]), jnp.array([3, 16]), jnp.array([0, 1]))
    with pytest.raises(ji.IndexRangeError, match=r"head out of range .*\(size 4\)"):
        checked(model, jnp.array([0, 1]), jnp.array([3, 1]), jnp.array([0, 9]))
    with pytest.raises(ji.IndexRangeError, match=r"layer out of range .*\(size 2\)"):
        checked(model, jnp.array([0, 2]), jnp.array([3, 1]), jnp.array([0, 1]))


def test_add_moves_exactly_one_head_by_exactly_scale_times_v(env):
    model, tokens, _ = env
    v = jax.random.normal(jax.random.key(7), (CFG.d_head,))
    name = "blocks.1.attn.hook_z"
    _, before = ji.run_with_cache(model, tokens, names=name)
    _, after = ji.run_with_hooks(model, tokens, names=name,
                                 interventions=[ji.add(name, v, scale=3.0, head=1)])
    delta = np.asarray(after[name] - before[name])  # [batch, pos, head, d_head]
    np.testing.assert_allclose(delta[:, :, 1], np.broadcast_to(3.0 * np.asarray(v), delta[:, :, 1].shape),
                               atol=1e-5)
    np.testing.assert_array_equal(delta[:, :, [0, 2, 3]], 0.0)
    _, at_pos = ji.run_with_hooks(model, tokens, names=name,
                                  interventions=[ji.add(name, v, scale=2.0, head=2, pos=5)])
    d = np.array(at_pos[name] - before[name])
    np.testing.assert_allclose(d[:, 5, 2], np.broadcast_to(2.0 * np.asarray(v), d[:, 5, 2].shape), atol=1e-5)
    d[:, 5, 2] = 0
    np.testing.assert_array_equal(d, 0.0)


def test_user_hook_without_layout_must_state_it():
    x = jnp.ones((3, 5, 2))
    with pytest.raises(ji.ShapeError, match="axes="):
        ji.run_with_hooks(lambda a: ji.hook("h", a), x, interventions=[ji.patch("h", 0.0, pos=1)])
    out = ji.run_with_hooks(lambda a: ji.hook("h", a, axes=("batch", "head", "pos")), x,
                            interventions=[ji.patch("h", 0.0, pos=1)])
    np.testing.assert_array_equal(out[:, :, 1], 0.0)
    np.testing.assert_array_equal(out[:, :, 0], 1.0)
    stated = ji.run_with_hooks(lambda a: ji.hook("h", a), x,
                               interventions=[ji.patch("h", 0.0, pos=1, axes=("batch", "pos", "d"))])
    np.testing.assert_array_equal(stated[:, 1], 0.0)


def test_layer_that_never_applies_in_user_code_is_an_error():
    def f(x):
        for i in range(2):
            with ji.layer_scope("blocks", i):
                x = ji.hook("hook_out", x + 1.0)
        return x

    with pytest.raises(ji.IndexRangeError, match="layer=3 .* never applied.*0..1"):
        ji.run_with_hooks(f, jnp.zeros(3), interventions=[ji.patch("blocks.*.hook_out", 0.0, layer=3)])
    neg = ji.run_with_hooks(f, jnp.zeros(3), interventions=[ji.patch("blocks.*.hook_out", 5.0, layer=-1)])
    np.testing.assert_array_equal(neg, 5.0)  # -1: the last layer of a Python loop too


def test_single_intervention_and_fwd_hooks_match_edit(env):
    model, tokens, _ = env

    def zero_head(z, hook):
        assert hook.name == "blocks.1.attn.hook_z" and hook.layer() == 1
        return z.at[:, :, 2].set(0.0)

    a = ji.run_with_hooks(model, tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    b = ji.run_with_hooks(model, tokens, interventions=ji.patch("blocks.*.attn.hook_z", 0.0, layer=1, head=2))
    np.testing.assert_allclose(a, b, atol=1e-6)
    seen = []

    def record(x, hook):
        seen.append(hook.name)

    ji.run_with_hooks(model, tokens, fwd_hooks=[("blocks.*.hook_resid_post", record)])
    assert sorted(seen) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
