"""Gemma 2/3, Qwen3, Phi-3 and GPT-J presets: hooks, local attention, weight processing and
generation on tiny random models (parity with transformers is in tests/io)."""

import dataclasses
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError
from jaxinterp.models import (
    center_unembed,
    center_writing_weights,
    init_transformer,
)
from jaxinterp.models.config import (
    TransformerConfig,
    gemma2_config,
    gemma3_config,
    gptj_config,
    phi3_config,
    qwen3_config,
)
from jaxinterp.models.hook_specs import spec

TINY = dict(d_model=32, n_heads=4, d_vocab=61, n_ctx=24)
CONFIGS = {  # windows of 5 cut into the 9-12 token prompts below
    "gemma2": gemma2_config(**TINY, n_layers=2, n_key_value_heads=2, d_head=8, d_mlp=48,
                            window_size=5, query_pre_attn_scalar=12.0)
    .replace(attn_scores_soft_cap=2.0, output_logits_soft_cap=3.0),
    "gemma3": gemma3_config(**TINY, n_layers=3, n_key_value_heads=1, d_head=8, d_mlp=48, window_size=5,
                            attn_types=("local", "global", "local"), rotary_base_local=50.0,
                            rotary_base=3000.0, rotary_scaling_factor=2.0),
    "qwen3": qwen3_config(**TINY, n_layers=2, n_key_value_heads=2, d_head=12, d_mlp=48),
    "phi3": phi3_config(**TINY, n_layers=2, d_mlp=48, window_size=5, rotary_dim=4),
    "gptj": gptj_config(**TINY, n_layers=2, rotary_dim=4),
}


def random_model(cfg, seed=0):
    """Random weights (std 0.3, norm weights near 1) filled with numpy: nothing to compile."""
    shapes = jax.eval_shape(lambda k: init_transformer(cfg, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        noise = 0.3 * rng.standard_normal(s.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        is_norm_w = ("ln" in name or "norm" in name) and name.endswith(".w")
        return jnp.asarray(noise + 1.0 if is_norm_w else noise, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def prompts(cfg, shape=(2, 11), seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.d_vocab, shape), jnp.int32)


@eqx.filter_jit
def fwd(model, tokens, mask=None):
    return model(tokens, mask)


def test_every_hook_is_reached_and_reaches_the_logits():
    """Every hook is reached, in the listed order, and nudging any one kind of hook changes
    the logits: each is a live point of the computation (one vmapped program). A nudge
    adds a fixed pattern (scaling would vanish through Gemma's q/k norms and post-norms)."""
    model = random_model(CONFIGS["gemma3"])  # every kind of hook the new families have
    toks = prompts(model.cfg, (1, 7))
    logits, cache = jax.jit(lambda m, t: ji.run_with_cache(m, t))(model, toks)
    assert list(cache) == model.hook_names()
    kinds = list(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.*.", n) for n in cache))

    def scaled(scales):
        ivs = [ji.edit(n, _nudge, scales[i]) for i, n in enumerate(kinds)]
        return ji.run_with_hooks(model, toks, interventions=ivs)

    out = jax.jit(jax.vmap(scaled))(0.5 * jnp.eye(len(kinds)))
    change = np.asarray(jnp.abs(out - logits).max(axis=(1, 2, 3)))
    assert not [n for n, c in zip(kinds, change, strict=True) if not c > 1e-4]


def _nudge(x, s):
    pattern = jnp.cos(0.7 * jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
    return x + (s * pattern).astype(x.dtype)


def test_family_hooks_follow_transformer_lens():
    names = set(random_model(CONFIGS["gemma3"]).hook_names())
    for name in ("blocks.0.ln1_post.hook_normalized", "blocks.1.ln2_post.hook_scale",
                 "blocks.2.attn.q_norm.hook_normalized", "blocks.2.attn.k_norm.hook_scale",
                 "blocks.1.attn.hook_rot_k"):
        assert name in names
    gptj = set(random_model(CONFIGS["gptj"]).hook_names())
    assert "blocks.0.hook_resid_mid" not in gptj and "blocks.0.ln2.hook_normalized" in gptj


def test_q_norm_hooks_have_position_and_head_axes():
    """``[batch, pos, head, d_head]``: a patch at pos=2, head=1 touches exactly that slice."""
    for name in ("blocks.0.attn.q_norm.hook_normalized", "blocks.0.attn.k_norm.hook_scale"):
        layout = spec(name)
        assert (layout.axis("pos"), layout.axis("head")) == (-3, -2)
    model = random_model(CONFIGS["qwen3"])
    name = "blocks.1.attn.q_norm.hook_normalized"
    iv = ji.patch(name, 0.0, pos=2, head=1)
    _, cache = ji.run_with_hooks(model, prompts(model.cfg, (1, 5)), interventions=[iv], names=name)
    x = np.asarray(cache[name])
    assert (x[:, 2, 1] == 0).all() and (np.delete(x[:, 2], 1, axis=1) != 0).all()
    assert (x[:, [0, 1, 3, 4]] != 0).all()


def test_local_layers_see_only_the_window_and_caps_bound():
    model = random_model(CONFIGS["gemma2"])
    toks = prompts(model.cfg)
    names = ["blocks.*.attn.hook_pattern", "blocks.0.attn.hook_attn_scores"]
    windowed, cache = jax.jit(lambda m, t: ji.run_with_cache(m, t, names=names))(model, toks)
    local, glob = np.asarray(cache["blocks.0.attn.hook_pattern"]), np.asarray(cache["blocks.1.attn.hook_pattern"])
    q, k = np.indices(local.shape[-2:])
    np.testing.assert_array_equal(local[..., (q - k >= 5) | (k > q)], 0.0)
    assert (local[..., (q - k < 5) & (k <= q)] > 0).all()
    assert (glob[..., k <= q] > 0).all()  # the global layer sees the whole prefix
    scores = np.asarray(cache["blocks.0.attn.hook_attn_scores"])
    assert np.abs(scores[scores > -1e30]).max() < 2.0  # attn_scores_soft_cap
    assert 2.5 < float(jnp.abs(windowed).max()) < 3.0  # output_logits_soft_cap
    # A window longer than the context is accepted and cuts nothing off.
    whole = dataclasses.replace(model, cfg=model.cfg.replace(window_size=1000))
    assert whole.cfg.window_size > whole.cfg.n_ctx
    unwindowed = fwd(whole, toks)
    np.testing.assert_allclose(windowed[:, :5], unwindowed[:, :5], atol=1e-6)
    assert not np.allclose(windowed[:, 5:], unwindowed[:, 5:], atol=1e-3)


def test_invalid_rewrites_are_refused():
    gemma2 = random_model(CONFIGS["gemma2"])
    with pytest.raises(ConfigError, match="center_unembed.*output_logits_soft_cap"):
        center_unembed(gemma2)
    with pytest.raises(ConfigError, match="LayerNorm"):
        center_writing_weights(gemma2)
    post_ln = random_model(CONFIGS["gemma2"].replace(normalization_type="LN", output_logits_soft_cap=None))
    with pytest.raises(ConfigError, match="ln1_post/ln2_post"):
        center_writing_weights(post_ln)


def test_layers_run_as_one_scanned_layer():
    """Local and global layers share one traced layer: the program does not grow with depth."""
    def size(n_layers):
        cfg = CONFIGS["gemma3"].replace(n_layers=n_layers, attn_types=None)
        cfg = cfg.replace(attn_types=tuple("global" if i % 3 == 1 else "local" for i in range(n_layers)))
        model = random_model(cfg)
        jaxpr = jax.make_jaxpr(lambda m, t: m(t))(model, prompts(cfg))
        scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
        return len(jaxpr.eqns), [e.params["length"] for e in scans]

    (n2, scans2), (n9, scans9) = size(2), size(9)
    assert n2 == n9 and scans2 == [2] and scans9 == [9]


def test_config_validation():
    base = dict(d_model=16, n_layers=2, n_heads=2, d_head=8, d_vocab=10, n_ctx=8)
    with pytest.raises(ConfigError, match="attn_types has 1 entries for 2 layers"):
        TransformerConfig(**base, attn_types=("local",), window_size=4)
    with pytest.raises(ConfigError, match="'global' or 'local'.*'sliding'"):
        TransformerConfig(**base, attn_types=("sliding", "global"), window_size=4)
    with pytest.raises(ConfigError, match="window_size is not set"):
        TransformerConfig(**base, attn_types=("local", "global"))
    with pytest.raises(ConfigError, match="window_size must be >= 1"):
        TransformerConfig(**base, window_size=0)
    with pytest.raises(ConfigError, match="soft_cap must be positive"):
        TransformerConfig(**base, attn_scores_soft_cap=-1.0)
    cfg = TransformerConfig(**base, window_size=100, attn_types=["local", "global"])  # > n_ctx: fine
    assert cfg.attn_types == ("local", "global") and hash(cfg)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_have_the_published_shapes():
    g2, g3, q3, phi, gj = gemma2_config(), gemma3_config(), qwen3_config(), phi3_config(), gptj_config()
    assert g2.attn_types[:2] == ("local", "global") and g2.scale == 16.0 and g2.embed_scale == 48.0
    assert g3.attn_types[:6] == ("local",) * 5 + ("global",) and g3.rotary_base_local == 1e4
    assert (q3.d_head, q3.n_kv_heads, q3.use_qk_norm) == (128, 8, True)
    assert (phi.window_size, phi.layer_attn_types[0], phi.tied_embeddings) == (2047, "local", False)
    assert (gj.rotary_dim, gj.rotary_adjacent_pairs, gj.parallel_attn_mlp) == (64, True, True)
