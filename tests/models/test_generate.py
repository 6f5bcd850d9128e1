"""Generation with a kv cache agrees with re-running the full model at every step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp.models.generation as G
from jaxinterp.errors import ShapeError, TokenError
from jaxinterp.hooks import add, run_with_cache, run_with_hooks
from jaxinterp.models.config import gpt2_config, llama_config, neox_config
from jaxinterp.models.generation import decode_step, generate, init_kv_cache, sample_logits
from jaxinterp.models.transformer import init_transformer

SMALL = dict(d_model=32, n_layers=2, n_heads=4, d_vocab=61, n_ctx=24)
CONFIGS = {
    "gpt2": gpt2_config(**SMALL),
    "neox": neox_config(**SMALL, rotary_pct=0.5),
    "llama_gqa": llama_config(**SMALL, n_key_value_heads=2, d_mlp=48),
}


def random_model(cfg, seed=0):
    """Random weights (std 0.3, norm weights near 1) filled with numpy: nothing to compile."""
    shapes = jax.eval_shape(lambda k: init_transformer(cfg, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        noise = 0.3 * rng.standard_normal(s.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        return jnp.asarray(noise + 1.0 if "ln" in name and name.endswith(".w") else noise, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def prompts(cfg, shape=(2, 5), seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.d_vocab, shape), jnp.int32)


@eqx.filter_jit
def fwd(model, tokens, mask, ivs=()):
    return run_with_hooks(model, tokens, mask, interventions=ivs)


def naive_greedy(model, tokens, n, mask=None, ivs=()):
    """Greedy decoding by re-running the whole sequence each step (no cache).

    The sequence lives in a right-padded buffer of fixed length (padding masked out, and
    causal attention never looks right), so every step reuses one compiled forward.
    """
    b, p = tokens.shape
    mask = jnp.ones_like(tokens) if mask is None else mask
    buf = jnp.pad(tokens, ((0, 0), (0, n)))
    buf_mask = jnp.pad(mask, ((0, 0), (0, n)))
    for i in range(n):
        nxt = jnp.argmax(fwd(model, buf, buf_mask, ivs)[:, p + i - 1], axis=-1)
        buf = buf.at[:, p + i].set(nxt.astype(buf.dtype))
        buf_mask = buf_mask.at[:, p + i].set(1)
    return buf


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_with_cache_matches_naive(name):
    cfg = CONFIGS[name]
    model, toks = random_model(cfg), prompts(cfg)
    out = generate(model, toks, 6)
    assert out.shape == (2, 11)
    np.testing.assert_array_equal(out, naive_greedy(model, toks, 6))
    assert len(set(np.asarray(out[:, 5:]).ravel().tolist())) > 1  # not a degenerate model


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_decode_step_logits_match_full_forward(name):
    cfg = CONFIGS[name]
    model, toks = random_model(cfg), prompts(cfg, (2, 7))
    step = eqx.filter_jit(decode_step)
    cache = init_kv_cache(cfg, 2, 10)
    logits, cache = step(model, cache, toks[:, :4])
    step_logits = [logits]
    for t in range(4, 7):
        logits, cache = step(model, cache, toks[:, t : t + 1])
        step_logits.append(logits)
    assert int(cache.index) == 7 and cache.k.shape == (2, 2, 10, cfg.n_kv_heads, cfg.d_head)
    full = fwd(model, toks, jnp.ones_like(toks))
    np.testing.assert_allclose(jnp.concatenate(step_logits, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_left_padded_batch_equals_single_rows(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    rows = [prompts(cfg, (1, n), seed=n) for n in (3, 6)]
    width = 6
    toks = jnp.concatenate([jnp.pad(r, ((0, 0), (width - r.shape[1], 0))) for r in rows])
    mask = jnp.concatenate([jnp.pad(jnp.ones_like(r), ((0, 0), (width - r.shape[1], 0))) for r in rows])
    out = generate(model, toks, 5, attention_mask=mask)
    for i, r in enumerate(rows):
        single = generate(model, r, 5)
        np.testing.assert_array_equal(out[i, width:], single[0, r.shape[1]:])
    # and the padded batch also matches naive decoding of the padded batch
    np.testing.assert_array_equal(out, naive_greedy(model, toks, 5, mask))


def test_sampling_reproducible_and_cold_limit_is_greedy():
    cfg = CONFIGS["gpt2"]
    model, toks = random_model(cfg), prompts(cfg)
    key = jax.random.PRNGKey(3)
    a = generate(model, toks, 6, temperature=1.0, key=key)
    b = generate(model, toks, 6, temperature=1.0, key=key)
    c = generate(model, toks, 6, temperature=1.0, key=jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = generate(model, toks, 6)
    cold = generate(model, toks, 6, temperature=1e-6, key=key)  # same program as a, b, c
    np.testing.assert_array_equal(cold, greedy)
    top1 = generate(model, toks, 6, temperature=2.0, top_k=1, key=key)
    np.testing.assert_array_equal(top1, greedy)


def test_sample_logits_top_k_and_top_p_support():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 500))
    keys = jax.random.split(jax.random.PRNGKey(0), 500)

    def support(**kw):
        draw = jax.vmap(lambda lg, k: sample_logits(lg[None], k, 1.0, **kw)[0])
        return set(np.asarray(draw(logits, keys)).tolist())

    assert support() == {0, 1, 2, 3}
    assert support(top_k=2) == {0, 1}
    assert support(top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert support(top_p=0.4) == {0}


def test_eos_stops_a_row():
    cfg = CONFIGS["gpt2"]
    model, toks = random_model(cfg), prompts(cfg)
    free = np.asarray(generate(model, toks, 6))
    eos = int(free[0, 7])  # row 0's third new token
    out = np.asarray(generate(model, toks, 6, eos_token_id=eos, pad_token_id=0))
    first = [int(np.argmax(free[i, 5:] == eos)) if (free[i, 5:] == eos).any() else 6 for i in range(2)]
    for i, f in enumerate(first):
        np.testing.assert_array_equal(out[i, : 5 + f + 1], free[i, : 5 + f + 1])
        assert (out[i, 5 + f + 1 :] == 0).all()
    assert first[0] <= 2


def test_decode_compiles_once(monkeypatch):
    """The step is traced once for the prefill and once for the whole loop, then reused."""
    cfg = CONFIGS["neox"]
    model = random_model(cfg)
    traces = []
    real = G.decode_step

    def counting(*args, **kw):
        traces.append(args[2].shape)
        return real(*args, **kw)

    monkeypatch.setattr(G, "decode_step", counting)
    toks = prompts(cfg, (3, 4))  # a shape no other test uses
    before = G._generate._cache_size()
    generate(model, toks, 7)
    assert traces == [(3, 4), (3, 1)]  # 7 new tokens, one traced step
    generate(model, prompts(cfg, (3, 4), seed=9), 7)
    assert len(traces) == 2 and G._generate._cache_size() == before + 1


def test_interventions_apply_during_generation():
    cfg = CONFIGS["llama_gqa"]
    model, toks = random_model(cfg), prompts(cfg)
    steer = add("blocks.0.hook_resid_post", jnp.linspace(-3, 3, cfg.d_model))
    out = generate(model, toks, 5, interventions=[steer])
    np.testing.assert_array_equal(out, naive_greedy(model, toks, 5, ivs=(steer,)))
    assert not np.array_equal(out, generate(model, toks, 5))


def test_decode_step_under_run_with_cache():
    cfg = CONFIGS["gpt2"]
    model, toks = random_model(cfg), prompts(cfg)
    _, cache = decode_step(model, init_kv_cache(cfg, 2, 8), toks)
    _, acts = run_with_cache(decode_step, model, cache, toks[:, :1], names="blocks.1.attn.hook_pattern")
    assert acts["blocks.1.attn.hook_pattern"].shape == (2, 4, 1, 8)  # one query over the cache
    np.testing.assert_allclose(acts["blocks.1.attn.hook_pattern"][..., 6:], 0.0)  # empty slots


def test_generate_validates_inputs():
    cfg = CONFIGS["gpt2"]
    model, toks = random_model(cfg), prompts(cfg)
    with pytest.raises(TokenError, match="n_ctx"):
        generate(model, toks, 30)
    with pytest.raises(ShapeError, match="left-padded"):
        generate(model, toks, 2, attention_mask=jnp.asarray([[1, 1, 1, 1, 0]] * 2))
    with pytest.raises(ValueError, match="PRNG key"):
        generate(model, toks, 2, temperature=1.0)
    with pytest.raises(TokenError, match="cache is full"):
        decode_step(model, init_kv_cache(cfg, 2, 4), toks)
    np.testing.assert_array_equal(generate(model, toks, 0), toks)
