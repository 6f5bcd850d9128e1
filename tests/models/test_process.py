"""Weight processing keeps the model's function: logits or log-probs match the original."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import ConfigError
from jaxinterp.hooks import run_with_cache
from jaxinterp.models.config import attn_only_config, gpt2_config, llama_config, neox_config
from jaxinterp.models.process import (
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    process_weights,
    untie_embeddings,
)
from jaxinterp.models.transformer import init_transformer

SMALL = dict(d_model=32, n_layers=2, n_heads=4, d_vocab=61, n_ctx=16)
CONFIGS = {
    "gpt2": gpt2_config(**SMALL, use_unembed_bias=True),
    "gpt2_tied": gpt2_config(**SMALL, tied_embeddings=True),
    "neox": neox_config(**SMALL, rotary_pct=0.5),
    "llama": llama_config(**SMALL, n_key_value_heads=2, d_mlp=48),
    "llama_qkv_bias": llama_config(**SMALL, n_key_value_heads=2, d_mlp=48, tied_embeddings=False)
    .replace(use_attn_bias=True),
    "attn_only": attn_only_config(**SMALL),
}
LN = ("gpt2", "gpt2_tied", "neox", "attn_only")


def random_model(cfg, seed=0):
    """A model whose every parameter (norm weights and biases too) is random and non-trivial.

    Built from the abstract shapes with numpy, so no random-number kernels get compiled.
    """
    shapes = jax.eval_shape(lambda k: init_transformer(cfg, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        noise = 0.2 * rng.standard_normal(s.shape).astype(np.float32)
        is_norm_w = "ln" in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith(".w")
        return jnp.asarray(noise + 1.0 if is_norm_w else noise, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@eqx.filter_jit
def fwd(model, tokens):
    return model(tokens)


@eqx.filter_jit
def cached(model, tokens, names):
    return run_with_cache(model, tokens, names=names)


def tokens_for(cfg, seed=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.d_vocab, (2, 12)), jnp.int32)


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fold_layer_norm_keeps_logits(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    toks = tokens_for(cfg)
    folded = fold_layer_norm(model)
    close(fwd(folded, toks), fwd(model, toks))
    for ln in (folded.blocks.ln1, folded.blocks.ln2, folded.ln_final):
        assert ln is None or (ln.w is None and ln.b is None)
    assert model.blocks.ln1.w is not None  # the original is untouched
    if cfg.normalization_type == "LN":  # readers are centred along d_model
        close(folded.blocks.attn.W_Q.mean(axis=2), 0.0, 1e-6)
        close(folded.W_U.mean(axis=0), 0.0, 1e-6)


@pytest.mark.parametrize("name", ["gpt2", "llama_qkv_bias"])
def test_folded_norm_output_is_hook_normalized(name):
    """After folding, q = hook_normalized @ W_Q + b_Q: the norm has no affine part left."""
    cfg = CONFIGS[name]
    model = random_model(cfg)
    toks = tokens_for(cfg)
    folded = fold_layer_norm(model)
    names = ["blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_q", "blocks.1.attn.hook_v"]
    _, ref = cached(model, toks, names)
    _, got = cached(folded, toks, names)
    for n in names:  # normalisation and the readers' outputs are unchanged
        close(got[n], ref[n])
    a = folded.blocks.attn
    q = jnp.einsum("bpd,hde->bphe", got[names[0]], a.W_Q[1]) + a.b_Q[1]
    close(q, got["blocks.1.attn.hook_q"])


@pytest.mark.parametrize("name", ["gpt2", "gpt2_tied", "attn_only"])
def test_center_writing_weights_keeps_logits(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    toks = tokens_for(cfg)
    centred = center_writing_weights(model)
    close(fwd(centred, toks), fwd(model, toks))
    close(centred.W_E.mean(-1), 0.0, 1e-6)
    close(centred.blocks.attn.W_O.mean(-1), 0.0, 1e-6)
    _, cache = cached(centred, toks, "blocks.*.hook_resid_post")
    close(cache["blocks.1.hook_resid_post"].mean(-1), 0.0, 1e-5)  # the stream is centred


def test_center_writing_weights_needs_layernorm():
    with pytest.raises(ConfigError, match="LayerNorm"):
        center_writing_weights(random_model(CONFIGS["llama"]))
    no_final = gpt2_config(**SMALL, final_norm=False)
    with pytest.raises(ConfigError, match="final LayerNorm"):
        center_writing_weights(random_model(no_final))


@pytest.mark.parametrize("name", ["gpt2", "gpt2_tied", "llama"])
def test_center_unembed_shifts_logits_by_a_constant(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    toks = tokens_for(cfg)
    logits, new = fwd(model, toks), fwd(center_unembed(model), toks)
    assert not np.allclose(new, logits, atol=1e-3)
    close(new, logits - logits.mean(-1, keepdims=True))
    close(jax.nn.log_softmax(new), jax.nn.log_softmax(logits))


@pytest.mark.parametrize("name", ["gpt2", "neox", "llama_qkv_bias"])
def test_fold_value_biases(name):
    """With GQA (llama_qkv_bias) each query head must pick up its own key/value head's b_V."""
    cfg = CONFIGS[name]
    model = random_model(cfg)
    toks = tokens_for(cfg)
    folded = fold_value_biases(model)
    assert float(jnp.abs(folded.blocks.attn.b_V).max()) == 0.0
    close(fwd(folded, toks), fwd(model, toks))
    _, a = cached(model, toks, "blocks.0.attn.hook_z")
    _, b = cached(folded, toks, "blocks.0.attn.hook_z")
    assert not np.allclose(a["blocks.0.attn.hook_z"], b["blocks.0.attn.hook_z"], atol=1e-3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_process_weights_keeps_log_probs(name):
    cfg = CONFIGS[name]
    model = random_model(cfg)
    toks = tokens_for(cfg)
    processed = process_weights(model)
    logits, cache = cached(processed, toks, ["hook_embed", "blocks.*.hook_resid_post"])
    close(jax.nn.log_softmax(logits), jax.nn.log_softmax(fwd(model, toks)))
    assert set(cache) == {"hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    close(processed.W_U.mean(-1), 0.0, 1e-6)
    if name in LN:
        close(processed.W_E.mean(-1), 0.0, 1e-6)
        close(processed.blocks.attn.b_O.mean(-1), 0.0, 1e-6)  # b_V folded, then centred


def test_each_option_alone_keeps_log_probs():
    model = random_model(CONFIGS["neox"])
    toks = tokens_for(model.cfg)
    ref = jax.nn.log_softmax(fwd(model, toks))
    flags = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
    for on in flags:
        processed = process_weights(model, **{f: f == on for f in flags})
        close(jax.nn.log_softmax(fwd(processed, toks)), ref)


def test_layernorm_bias_creates_missing_biases():
    """LN biases folded into a model without attention/MLP/unembed biases create them."""
    cfg = gpt2_config(**SMALL, use_attn_bias=False, use_mlp_bias=False)
    model = random_model(cfg)
    toks = tokens_for(cfg)
    folded = fold_layer_norm(model)
    assert folded.cfg.use_attn_bias and folded.cfg.use_mlp_bias and folded.cfg.use_unembed_bias
    assert folded.blocks.attn.b_O is not None and folded.b_U is not None
    close(fwd(folded, toks), fwd(model, toks))


def test_gated_mlp_with_layernorm_bias_cannot_fold():
    cfg = llama_config(**SMALL, n_key_value_heads=2, d_mlp=48).replace(normalization_type="LN")
    model = random_model(cfg)
    with pytest.raises(ConfigError, match="b_gate"):
        fold_layer_norm(model)
    toks = tokens_for(cfg)  # process_weights skips the fold, keeps the rest
    close(jax.nn.log_softmax(fwd(process_weights(model), toks)), jax.nn.log_softmax(fwd(model, toks)))


def test_untie_embeddings():
    model = random_model(CONFIGS["llama"])
    untied = untie_embeddings(model)
    assert model.W_U is None and not untied.cfg.tied_embeddings
    np.testing.assert_array_equal(untied.W_U, model.W_E.T)
