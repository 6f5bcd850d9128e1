"""The hooked transformer: shapes, padding, dtypes, direct path, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError, ShapeError, TokenError
from jaxinterp.models import (
    attn_only_config,
    gpt2_config,
    init_transformer,
    llama_config,
    neox_config,
)

CONFIGS = {
    "gpt2": gpt2_config(d_model=32, n_layers=2, n_heads=4, d_vocab=61, n_ctx=16),
    "neox": neox_config(d_model=32, n_layers=2, n_heads=4, d_vocab=61, n_ctx=16),
    "llama": llama_config(d_model=32, n_layers=2, n_heads=4, n_key_value_heads=2, d_mlp=48,
                          d_vocab=61, n_ctx=16),
    "attn_only": attn_only_config(n_layers=2, d_model=32, n_heads=4, d_vocab=61, n_ctx=16),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return init_transformer(CONFIGS[request.param], jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (3, 9), 0, 61)


def test_logits_shape_and_finite(model, tokens):
    logits = model(tokens)
    assert logits.shape == (3, 9, 61)
    assert bool(jnp.isfinite(logits).all())


def test_causal(model, tokens):
    """Changing a later token never changes earlier logits."""
    changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 61)
    a, b = model(tokens), model(changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_left_padding_matches_unpadded(model, tokens):
    pad = jnp.concatenate([jnp.zeros((3, 4), jnp.int32), tokens], axis=1)
    mask = jnp.concatenate([jnp.zeros((3, 4), jnp.int32), jnp.ones_like(tokens)], axis=1)
    np.testing.assert_allclose(model(pad, mask)[:, 4:], model(tokens), atol=2e-5)


def test_every_hook_is_reached(model, tokens):
    _, cache = ji.run_with_cache(model, tokens)
    assert list(cache) == model.hook_names()


def test_stop_at_layer_and_resid(model, tokens):
    _, cache = ji.run_with_cache(model, tokens, names="blocks.0.hook_resid_post")
    np.testing.assert_allclose(model(tokens, stop_at_layer=1), cache["blocks.0.hook_resid_post"], atol=1e-6)


def test_remat_gives_same_gradients(model, tokens):
    def loss(m, remat):
        return jax.nn.log_softmax(m(tokens, remat=remat)).mean()

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # two programs, not one per eager op
    g1 = grad(model, False)
    g2 = grad(model, True)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_runs_close_to_float32(tokens):
    cfg = CONFIGS["llama"]
    m32 = init_transformer(cfg, jax.random.key(0))
    m16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, m32)
    a, b = m32(tokens), m16(tokens)
    assert b.dtype == jnp.bfloat16
    assert float(jnp.abs(a - b.astype(jnp.float32)).max()) < 0.05


def test_zero_layer_model_is_the_direct_path(tokens):
    """With no layers the logits are LN(W_E[token]) @ W_U: bigram statistics."""
    cfg = attn_only_config(n_layers=0, d_model=32, n_heads=4, d_vocab=61, n_ctx=16)
    m = init_transformer(cfg, jax.random.key(2))
    x = m.W_E[tokens] + m.W_pos[jnp.arange(9)]
    x = x - x.mean(-1, keepdims=True)
    x = x / jnp.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps)
    np.testing.assert_allclose(m(tokens), x @ m.W_U, atol=1e-5)


def test_compiled_program_does_not_grow_with_depth(tokens):
    """Layers are scanned: the jaxpr of a 6-layer model is no bigger than a 1-layer one."""
    sizes = []
    for n in (1, 6):
        m = init_transformer(CONFIGS["gpt2"].replace(n_layers=n), jax.random.key(0))
        sizes.append(len(str(jax.make_jaxpr(lambda m, t: m(t))(m, tokens))))
    assert sizes[1] < sizes[0] * 1.05


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (jnp.array([[1, 2, 61]]), TokenError, "out of range"),
        (jnp.array([[1, -1]]), TokenError, "out of range"),
        (jnp.zeros((1, 17), jnp.int32), TokenError, "n_ctx"),
        (jnp.zeros((1, 2, 4), jnp.int32), ShapeError, "[batch, pos]"),
        (jnp.zeros((1, 4), jnp.float32), ShapeError, "integers"),
    ],
)
def test_bad_tokens(bad, error, words):
    m = init_transformer(CONFIGS["gpt2"], jax.random.key(0))
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        m(bad)


def test_bad_mask_shape(tokens):
    m = init_transformer(CONFIGS["gpt2"], jax.random.key(0))
    with pytest.raises(ShapeError, match="attention_mask"):
        m(tokens, jnp.ones((3, 8), jnp.int32))


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(n_key_value_heads=3), "multiple of n_key_value_heads"),
        (dict(act_fn="swish"), "act_fn"),
        (dict(normalization_type="BN"), "normalization_type"),
        (dict(rotary_dim=7, positional_embedding_type="rotary"), "rotary_dim"),
        (dict(d_model=0), "d_model"),
    ],
)
def test_bad_config(changes, words):
    with pytest.raises(ConfigError, match=words):
        CONFIGS["gpt2"].replace(**changes)


def test_unknown_hook_name_lists_nearest(tokens):
    m = init_transformer(CONFIGS["gpt2"], jax.random.key(0))
    with pytest.raises(ji.HookNameError, match="blocks.0.hook_resid_pre"):
        ji.run_with_cache(m, tokens, names="blocks.0.hook_resid_pree")


def test_concrete_tokens_closed_over_inside_jit(tokens):
    """Validation runs on the host for concrete tokens even when called inside a trace."""
    m = init_transformer(CONFIGS["gpt2"], jax.random.key(0))
    out = jax.jit(lambda scale: m(tokens) * scale)(2.0)
    np.testing.assert_allclose(out, 2.0 * m(tokens), rtol=1e-5, atol=1e-5)


def test_attention_scores_are_scaled_dot_products_and_pattern_their_causal_softmax(model, tokens):
    """scores = q . k / sqrt(d_head) (rotated q/k where rotary) at unmasked entries; the
    pattern is the softmax over keys up to the query. Catches a dropped or doubled scale."""
    cfg = model.cfg
    rotary = cfg.positional_embedding_type == "rotary"
    q_name, k_name = ("attn.hook_rot_q", "attn.hook_rot_k") if rotary else ("attn.hook_q", "attn.hook_k")
    _, cache = ji.run_with_cache(model, tokens, names=[f"blocks.*.{n}" for n in
                                                      (q_name, k_name, "attn.hook_attn_scores", "attn.hook_pattern")])
    group = cfg.n_heads // cfg.n_kv_heads
    causal = np.tril(np.ones((tokens.shape[1],) * 2, bool))
    for layer in range(cfg.n_layers):
        q = np.asarray(cache[f"blocks.{layer}.{q_name}"], np.float64)
        k = np.repeat(np.asarray(cache[f"blocks.{layer}.{k_name}"], np.float64), group, axis=2)
        want = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(cfg.d_head)
        scores = np.asarray(cache[f"blocks.{layer}.attn.hook_attn_scores"], np.float64)
        np.testing.assert_allclose(scores[..., causal], want[..., causal], rtol=1e-4, atol=1e-5)
        masked = np.where(causal, want, -np.inf)
        soft = np.exp(masked - masked.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(cache[f"blocks.{layer}.attn.hook_pattern"]), soft, atol=1e-5)
