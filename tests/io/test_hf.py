"""Hugging Face loading: logits parity with transformers, cache layout, and bad input."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp.errors import CheckpointError, ConfigError
from jaxinterp.hooks import run_with_cache
from jaxinterp.io.hf import config_from_hf, load_hf, read_safetensors

FAMILIES = ["gpt2", "neox", "neox_sequential", "llama", "llama_tied", "qwen2", "mistral"]  # conftest.SPECS
TOL = 1e-4


def tokens(batch: int = 2, seq: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 100, (batch, seq))


def hf_logits(model, toks: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    kwargs = {}
    if mask is not None:  # jaxinterp's positions: count real tokens only
        kwargs = dict(attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0)))
    with torch.no_grad():
        return model(torch.tensor(toks), **kwargs).logits.numpy()


# Parity with transformers ------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(hf_checkpoint, name):
    torch_model, folder = hf_checkpoint(name)
    model, _ = load_hf(folder)
    toks = tokens()
    ref = hf_logits(torch_model, toks)
    assert np.abs(ref).max() > 1.0  # random enough that a wrong weight would show
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(toks))), ref, atol=TOL, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_logits_match_transformers(hf_checkpoint, name):
    torch_model, folder = hf_checkpoint(name)
    model, _ = load_hf(folder)
    toks = tokens(seed=1)
    mask = np.ones_like(toks)
    mask[1, :4] = 0
    toks[1, :4] = 0  # pad id
    out = np.asarray(model(jnp.asarray(toks), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(out[real], hf_logits(torch_model, toks, mask)[real], atol=TOL, rtol=0)
    alone = np.asarray(model(jnp.asarray(toks[1:, 4:])))[0]  # the padded row, unpadded
    np.testing.assert_allclose(out[1, 4:], alone, atol=TOL, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_cache_follows_transformer_lens(hf_checkpoint, name):
    import torch

    torch_model, folder = hf_checkpoint(name)
    model, _ = load_hf(folder)
    cfg, toks = model.cfg, tokens(batch=3, seq=7)
    _, cache = run_with_cache(model, jnp.asarray(toks), names=["blocks.*.attn.*", "blocks.*.hook_resid_post"])
    b, p, H, G, e, d = 3, 7, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    for layer in range(cfg.n_layers):
        pre = f"blocks.{layer}."
        assert cache[pre + "attn.hook_pattern"].shape == (b, H, p, p)
        assert cache[pre + "attn.hook_attn_scores"].shape == (b, H, p, p)
        assert cache[pre + "attn.hook_q"].shape == (b, p, H, e)
        assert cache[pre + "attn.hook_k"].shape == (b, p, G, e)
        assert cache[pre + "attn.hook_z"].shape == (b, p, H, e)
        assert cache[pre + "hook_resid_post"].shape == (b, p, d)
        np.testing.assert_allclose(cache[pre + "attn.hook_pattern"].sum(-1), 1.0, atol=1e-5)
    with torch.no_grad():
        hidden = torch_model(torch.tensor(toks), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(cache["blocks.0.hook_resid_post"], hidden[1].numpy(), atol=TOL, rtol=0)
    assert model.blocks.attn.W_K.shape == (cfg.n_layers, G, d, e)
    assert model.W_U is None if name == "gpt2" else model.W_U.shape == (d, cfg.d_vocab)


@pytest.mark.torch
def test_config_of_loaded_models(hf_checkpoint):
    cfgs = {name: load_hf(hf_checkpoint(name)[1])[0].cfg for name in ("neox", "llama_tied", "mistral")}
    neox = cfgs["neox"]
    assert (neox.rotary_dim, neox.rotary_base, neox.parallel_attn_mlp) == (4, 500.0, True)
    assert cfgs["llama_tied"].tied_embeddings and cfgs["llama_tied"].n_kv_heads == 2
    mistral = cfgs["mistral"]  # a sliding window on every layer; the context is not capped
    assert (mistral.n_ctx, mistral.window_size, mistral.layer_attn_types) == (32, 16, ("local", "local"))


@pytest.mark.torch
def test_sharded_checkpoint(hf_checkpoint, tmp_path):
    torch_model, folder = hf_checkpoint("llama")
    torch_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    sharded, _ = load_hf(tmp_path)
    single, _ = load_hf(folder)
    toks = jnp.asarray(tokens())
    np.testing.assert_array_equal(np.asarray(sharded(toks)), np.asarray(single(toks)))


@pytest.mark.torch
def test_bfloat16_checkpoint_read_exactly(hf_checkpoint, tmp_path):
    import copy

    import torch

    model = copy.deepcopy(hf_checkpoint("llama_tied")[0]).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16", safe_serialization=True)
    tensors = read_safetensors(tmp_path / "bf16")
    emb = model.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"].astype(np.float32), emb)
    loaded, _ = load_hf(tmp_path / "bf16", dtype="bfloat16")
    assert loaded.W_E.dtype == jnp.bfloat16 and loaded.blocks.attn.W_Q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded.W_E, np.float32), emb)


@pytest.mark.torch
def test_tokenizer_is_loaded_when_present(hf_checkpoint):
    _, tokenizer = load_hf(hf_checkpoint("gpt2")[1])
    assert tokenizer.encode("the cat sat") == [0, 1, 2]
    assert tokenizer.decode([3, 4]) == "on mat"
    assert tokenizer.vocab_size == 9 and tokenizer.eos_token_id == 8
    assert load_hf(hf_checkpoint("llama")[1])[1] is None


# Checkpoints written with numpy: loading paths and bad input, no torch needed ---------


def write_gpt2(folder, *, layers=1, d=16, heads=2, vocab=20, ctx=8, drop=(), reshape=None, extra=()):
    """A random GPT-2 checkpoint with hub-style names (no ``transformer.`` prefix)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", n_layer=layers,
                  n_embd=d, n_head=heads, vocab_size=vocab, n_positions=ctx)
    (folder / "config.json").write_text(json.dumps(config))
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(layers):
        shapes |= {f"h.{i}.ln_1.weight": (d,), f"h.{i}.ln_1.bias": (d,), f"h.{i}.ln_2.weight": (d,),
                   f"h.{i}.ln_2.bias": (d,), f"h.{i}.attn.c_attn.weight": (d, 3 * d),
                   f"h.{i}.attn.c_attn.bias": (3 * d,), f"h.{i}.attn.c_proj.weight": (d, d),
                   f"h.{i}.attn.c_proj.bias": (d,), f"h.{i}.mlp.c_fc.weight": (d, 4 * d),
                   f"h.{i}.mlp.c_fc.bias": (4 * d,), f"h.{i}.mlp.c_proj.weight": (4 * d, d),
                   f"h.{i}.mlp.c_proj.bias": (d,), f"h.{i}.attn.bias": (1, 1, ctx, ctx)}
    shapes |= dict(reshape or {}) | {name: (2,) for name in extra}
    rng = np.random.default_rng(0)
    tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items() if k not in drop}
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_numpy_gpt2_loads_without_prefix(tmp_path):
    model, tokenizer = load_hf(write_gpt2(tmp_path / "m"))
    assert tokenizer is None and model.cfg.original_architecture == "GPT2LMHeadModel"
    assert model.blocks.attn.W_Q.shape == (1, 2, 16, 8) and model.W_pos.shape == (8, 16)
    assert np.isfinite(np.asarray(model(jnp.zeros((1, 8), jnp.int32)))).all()


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
    folder = write_gpt2(tmp_path / "m", reshape={"h.0.attn.c_attn.weight": (16, 24)})
    with pytest.raises(CheckpointError, match=r"h\.0\.attn\.c_attn\.weight: expected shape \[16, 48\], found \[16, 24\]"):
        load_hf(folder)


def test_missing_and_unexpected_tensors_listed(tmp_path):
    folder = write_gpt2(tmp_path / "m", drop={"h.0.mlp.c_fc.bias"}, extra={"h.1.ln_1.weight"})
    with pytest.raises(CheckpointError) as err:
        load_hf(folder)
    assert "missing tensor h.0.mlp.c_fc.bias (expected shape [64])" in str(err.value)
    assert "unexpected tensor(s): h.1.ln_1.weight" in str(err.value)


def test_pickled_weights_refused(tmp_path):
    folder = write_gpt2(tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*never unpickles.*safe_serialization"):
        load_hf(folder)


def test_missing_folder_config_and_shard(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint folder"):
        load_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="No config.json"):
        load_hf(tmp_path / "empty")
    folder = write_gpt2(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {"wte.weight": "model-00001-of-00001.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00001-of-00001.safetensors"):
        load_hf(folder)
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="Could not read safetensors file"):
        load_hf(folder)


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ConfigError, match="BertForMaskedLM.*GPT2LMHeadModel.*LlamaForCausalLM"):
        config_from_hf({"architectures": ["BertForMaskedLM"], "hidden_size": 8})


def test_rope_scaling_refused_and_rope_fields_read():
    llama = dict(architectures=["LlamaForCausalLM"], hidden_size=32, num_attention_heads=4,
                 num_hidden_layers=1, intermediate_size=64, vocab_size=50, max_position_embeddings=64)
    scaled = llama | {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}
    with pytest.raises(ConfigError, match="rope_parameters asks for rope type 'llama3', which is not implemented"):
        config_from_hf(scaled)
    with pytest.raises(ConfigError, match="rope_scaling asks for rope type 'dynamic'"):
        config_from_hf(llama | {"rope_scaling": {"type": "dynamic", "factor": 2.0}})
    assert config_from_hf(llama | {"rope_scaling": {"type": "linear", "factor": 2.0}}).rotary_scaling_factor == 2.0
    assert config_from_hf(llama | {"rope_theta": 5e5}).rotary_base == 5e5
    neox = dict(architectures=["GPTNeoXForCausalLM"], hidden_size=32, num_attention_heads=4,
                num_hidden_layers=1, intermediate_size=64, vocab_size=50, max_position_embeddings=64)
    old = config_from_hf(neox | {"rotary_pct": 0.5, "rotary_emb_base": 123})
    new = config_from_hf(neox | {"rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 123}})
    assert old == new and (old.rotary_dim, old.rotary_base) == (4, 123.0)


def test_hub_download_path(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    folder, calls = write_gpt2(tmp_path / "m"), []

    def fake(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    model, _ = load_hf("someone/tiny-gpt2", revision="v1")
    assert model.cfg.model_name == "someone/tiny-gpt2"
    (repo, kwargs), = calls
    assert repo == "someone/tiny-gpt2" and kwargs["revision"] == "v1"
    assert "*.safetensors" in kwargs["allow_patterns"]
    assert not any("bin" in p for p in kwargs["allow_patterns"])

    def offline(repo_id, **kwargs):
        raise OSError("Cannot reach huggingface.co")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="'someone/tiny-gpt2' is not a local folder.*Offline"):
        load_hf("someone/tiny-gpt2")
