"""Tiny random Hugging Face models, saved as safetensors checkpoints once per session.

``hf_checkpoint(name)`` returns ``(torch_model, folder)``. Every parameter gets random,
non-trivial values (norm weights near 1, non-zero biases, weights large enough that
attention patterns are far from uniform), so a transposed matrix or a dropped bias shows
up in the logits. Needs torch and transformers; tests that use it skip without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

D, HEADS, VOCAB, CTX = 64, 4, 100, 32

# name -> (config class, model class, config kwargs)
SPECS: dict[str, tuple[str, str, dict]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        n_layer=2, n_embd=D, n_head=HEADS, vocab_size=VOCAB, n_positions=CTX,
        activation_function="gelu_new", bos_token_id=0, eos_token_id=0)),
    "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, intermediate_size=128,
        vocab_size=VOCAB, max_position_embeddings=CTX, rotary_pct=0.25, rotary_emb_base=500,
        use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5)),
    "neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, intermediate_size=128,
        vocab_size=VOCAB, max_position_embeddings=CTX, rotary_pct=0.5, rotary_emb_base=1000,
        use_parallel_residual=False, hidden_act="gelu_new", tie_word_embeddings=True)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=2,
        intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX, rope_theta=500.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=2,
        intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX, rope_theta=500.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=2,
        intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX, rope_theta=500.0,
        tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=1,
        intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX, sliding_window=16)),
    # The families of issue 8: windows of 6 cut into the 12-token prompts of the tests,
    # small soft caps bend the scores and logits, explicit head_dim != d / heads.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=2,
        head_dim=24, intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX,
        sliding_window=6, query_pre_attn_scalar=20, attn_logit_softcapping=3.0,
        final_logit_softcapping=4.0, rope_parameters={"rope_type": "default", "rope_theta": 300.0},
        pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=3, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=1,
        head_dim=16, intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX,
        sliding_window=6, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0}},
        pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=2,
        head_dim=24, intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX,
        rope_theta=500.0, tie_word_embeddings=False)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        num_hidden_layers=2, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=2,
        intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=CTX, sliding_window=6,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
        pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(
        n_layer=2, n_embd=D, n_head=HEADS, rotary_dim=8, vocab_size=VOCAB, n_positions=CTX,
        activation_function="gelu_new", bos_token_id=0, eos_token_id=0)),
}


def randomize(model, seed: int = 0) -> None:
    """Give every parameter random, non-trivial values (in place, under no_grad)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or name.split(".")[-2].startswith("ln")):
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif p.ndim == 1:  # biases
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def tiny_tokenizer_json(folder: Path) -> None:
    """A word-level ``tokenizer.json`` with an ``<|endoftext|>`` special token."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="the"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tok.save(str(folder / "tokenizer.json"))


def build(name: str, folder: Path):
    """Build, randomise and save the tiny model ``name`` into ``folder``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls, kwargs = SPECS[name]
    config = getattr(transformers, config_cls)(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    randomize(model, seed=sorted(SPECS).index(name))
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """``hf_checkpoint(name) -> (torch_model, folder)``, each built once per session."""
    built: dict[str, tuple] = {}

    def get(name: str):
        if name not in built:
            folder = tmp_path_factory.mktemp(f"hf_{name}")
            model = build(name, folder)
            if name == "gpt2":
                tiny_tokenizer_json(folder)
            built[name] = (model, folder)
        return built[name]

    return get
