"""Gemma 2/3, Qwen3, Phi-3 and GPT-J from safetensors: parity with transformers (logits,
left padding, hidden states, greedy generation), hooks, weight processing, bad configs."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ConfigError
from jaxinterp.io.hf import config_from_hf, load_hf
from jaxinterp.models import generate, process_weights
from jaxinterp.models.config import (
    gemma2_config,
    gemma3_config,
    gptj_config,
    phi3_config,
    qwen3_config,
)

NEW = ["gemma2", "gemma3", "qwen3", "phi3", "gptj"]  # conftest.SPECS; windows of 6 in gemma*/phi3
TOL = 1e-4


def torch_run(torch_model, toks, mask=None, **kwargs):
    import torch

    if mask is not None:  # jaxinterp's positions: count real tokens only
        kwargs |= dict(attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0)))
    with torch.no_grad():
        return torch_model(torch.tensor(toks), **kwargs)


@eqx.filter_jit
def cached_forward(model, toks, mask):
    return ji.run_with_cache(model, toks, mask)


@eqx.filter_jit
def forward(model, toks, mask):
    return model(toks, mask)


@pytest.mark.torch
@pytest.mark.parametrize("name", NEW)
def test_family_matches_transformers(hf_checkpoint, name):
    """Logits (left-padded, prompts longer than the window), the residual stream after
    layer 0, every hook, weight processing, and greedy generation with the kv cache (on the
    families whose decoding differs: windows, q/k norm, local rotary, adjacent pairs)."""
    torch_model, folder = hf_checkpoint(name)
    model, _ = load_hf(folder)
    toks = np.random.default_rng(1).integers(3, 100, (2, 12))
    mask = np.ones_like(toks)
    mask[1, :4], toks[1, :4] = 0, 0
    real = mask.astype(bool)
    ref = torch_run(torch_model, toks, mask, output_hidden_states=True)
    logits, cache = cached_forward(model, jnp.asarray(toks), jnp.asarray(mask))
    assert np.abs(ref.logits.numpy()).max() > 1.0
    np.testing.assert_allclose(np.asarray(logits)[real], ref.logits.numpy()[real], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(cache["blocks.0.hook_resid_post"])[real],
                               ref.hidden_states[1].numpy()[real], atol=TOL, rtol=0)
    assert list(cache) == model.hook_names()

    ref_logp = jax.nn.log_softmax(jnp.asarray(ref.logits.numpy()))
    processed = process_weights(model)
    logp = jax.nn.log_softmax(forward(processed, jnp.asarray(toks), jnp.asarray(mask)))
    np.testing.assert_allclose(np.asarray(logp)[real], np.asarray(ref_logp)[real], atol=2 * TOL, rtol=0)

    if name not in ("gemma2", "gemma3", "gptj"):  # the others add nothing new to decoding
        return
    import torch

    with torch.no_grad():
        want = torch_model.generate(torch.tensor(toks[:, :9]), attention_mask=torch.tensor(mask[:, :9]),
                                    max_new_tokens=4, do_sample=False, pad_token_id=0).numpy()
    got = generate(model, jnp.asarray(toks[:, :9]), 4, attention_mask=jnp.asarray(mask[:, :9]))
    np.testing.assert_array_equal(np.asarray(got)[:, 9:], want[:, 9:])


@pytest.mark.torch
def test_prompt_shorter_than_the_window(hf_checkpoint):
    torch_model, folder = hf_checkpoint("gemma2")
    model, _ = load_hf(folder)
    toks = np.random.default_rng(2).integers(3, 100, (2, 4))
    assert toks.shape[1] < model.cfg.window_size
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(toks))), torch_run(torch_model, toks).logits.numpy(),
                               atol=TOL, rtol=0)


@pytest.mark.torch
def test_configs_and_presets_agree(hf_checkpoint):
    """The presets, given the tiny models' sizes, are exactly what loading gives."""
    shapes = dict(d_model=64, n_heads=4, d_vocab=100, n_ctx=32)
    expected = {
        "gemma2": gemma2_config(**shapes, n_layers=2, n_key_value_heads=2, d_head=24, d_mlp=96,
                                window_size=6, query_pre_attn_scalar=20.0, rotary_base=300.0,
                                attn_scores_soft_cap=3.0, output_logits_soft_cap=4.0),
        "gemma3": gemma3_config(**shapes, n_layers=3, n_key_value_heads=1, d_head=16, d_mlp=96,
                                window_size=6, query_pre_attn_scalar=16.0, rotary_base=5000.0,
                                rotary_base_local=100.0, rotary_scaling_factor=2.0,
                                attn_types=("local", "global", "local")),
        "qwen3": qwen3_config(**shapes, n_layers=2, n_key_value_heads=2, d_head=24, d_mlp=96,
                              rotary_base=500.0, tied_embeddings=False),
        "phi3": phi3_config(**shapes, n_layers=2, n_key_value_heads=2, d_mlp=96, window_size=6,
                            rotary_base=500.0, rotary_dim=8),
        "gptj": gptj_config(**shapes, n_layers=2, rotary_dim=8),
    }
    for name, want in expected.items():
        got = load_hf(hf_checkpoint(name)[1])[0].cfg
        assert got.replace(model_name="custom") == want, name


GEMMA2 = dict(architectures=["Gemma2ForCausalLM"], hidden_size=32, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, num_hidden_layers=2, intermediate_size=64,
              vocab_size=50, max_position_embeddings=64, sliding_window=16)


def test_unimplemented_config_fields_are_named():
    gemma3 = GEMMA2 | {"architectures": ["Gemma3ForCausalLM"]}
    qwen3 = dict(GEMMA2, architectures=["Qwen3ForCausalLM"])
    phi3 = dict(GEMMA2, architectures=["Phi3ForCausalLM"])
    gptj = dict(architectures=["GPTJForCausalLM"], n_embd=32, n_head=4, n_layer=1, vocab_size=50,
                n_positions=64, rotary_dim=4)
    cases = [
        (GEMMA2 | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, r"rope_parameters.*'yarn'"),
        (gemma3 | {"rope_parameters": {"full_attention": {"rope_type": "default"},
                                       "sliding_attention": {"rope_type": "dynamic"}}},
         r"rope_parameters\.sliding_attention.*'dynamic'"),
        (gemma3 | {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, None),  # global only: fine
        (gemma3 | {"rope_parameters": {"full_attention": {"rope_type": "default"},
                                       "sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
         "global layers only"),
        (gemma3 | {"layer_types": ["sliding_attention", "chunked_attention"]}, r"layer_types \['chunked_attention'\]"),
        (GEMMA2 | {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
        (qwen3 | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_scaling.*'yarn'"),
        (phi3 | {"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0]}}, r"rope_parameters.*'longrope'"),
        (gptj | {"activation_function": "quick_gelu"}, r"activation_function='quick_gelu'"),
    ]
    for config, error in cases:
        if error is None:
            assert config_from_hf(config).rotary_scaling_factor == 8.0
            continue
        with pytest.raises(ConfigError, match=error):
            config_from_hf(config)


def test_windows_from_every_kind_of_config():
    big = config_from_hf(GEMMA2 | {"sliding_window": 4096})  # longer than the context: accepted
    assert big.window_size == 4096 > big.n_ctx and big.attn_types == ("local", "global")
    gemma3 = config_from_hf(GEMMA2 | {"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 7,
                                      "rope_theta": 1e6, "rope_local_base_freq": 1e4})
    assert gemma3.attn_types == ("local",) * 5 + ("global", "local")
    assert (gemma3.rotary_base, gemma3.rotary_base_local, gemma3.use_qk_norm) == (1e6, 1e4, True)
    qwen = dict(GEMMA2, architectures=["Qwen3ForCausalLM"], num_hidden_layers=3)
    assert config_from_hf(qwen).window_size is None  # use_sliding_window defaults to False
    slid = config_from_hf(qwen | {"use_sliding_window": True, "max_window_layers": 1})
    assert slid.attn_types == ("global", "local", "local") and slid.use_qk_norm
    phi = config_from_hf(dict(GEMMA2, architectures=["Phi3ForCausalLM"]))
    assert phi.layer_attn_types == ("local", "local") and not phi.use_qk_norm
    listed = config_from_hf(qwen | {"sliding_window": 8, "layer_types": ["full_attention"] * 3})
    assert listed.window_size is None  # no sliding layer: nothing to cut
    json.dumps(gemma3.to_dict())  # the config round-trips through JSON (saved with weights)
