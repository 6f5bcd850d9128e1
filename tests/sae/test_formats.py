"""SAELens 6.x round trips in both directions against the real package, Gemma Scope
params.npz and sparsify folders written in their layouts, and the file errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _sae_helpers import randomised
from safetensors.numpy import save_file

from jaxinterp.errors import CheckpointError
from jaxinterp.sae import SAEConfig
from jaxinterp.sae.formats import (
    load_gemma_scope,
    load_saelens,
    load_sparsify,
    save_saelens,
    save_sparsify,
)

D_IN, D_SAE = 12, 40
X = np.random.default_rng(0).normal(size=(9, D_IN)).astype(np.float32)

OURS = {
    "standard": SAEConfig(D_IN, D_SAE, "standard", hook_name="blocks.0.hook_resid_post"),
    "topk": SAEConfig(D_IN, D_SAE, "topk", k=5),
    "jumprelu": SAEConfig(D_IN, D_SAE, "jumprelu", apply_b_dec_to_input=False),
    "gated": SAEConfig(D_IN, D_SAE, "gated"),
    "batchtopk": SAEConfig(D_IN, D_SAE, "batchtopk", k=5),
    "transcoder": SAEConfig(D_IN, D_SAE, "standard", d_out=7, hook_name_out="blocks.0.hook_mlp_out"),
    "skip_transcoder": SAEConfig(D_IN, D_SAE, "standard", d_out=7, skip_connection=True),
    "jumprelu_transcoder": SAEConfig(D_IN, D_SAE, "jumprelu", d_out=7),
}


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")


def torch_forward(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        t = torch.from_numpy(x)
        return model.encode(t).numpy(), model(t).numpy()


@pytest.mark.parametrize("name", OURS)
def test_written_here_loads_in_saelens_with_equal_outputs(name, sae_lens, tmp_path: Path) -> None:
    ours = randomised(OURS[name])
    save_saelens(ours, tmp_path / name, model_name="tiny")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / name)
    expected = {"batchtopk": "jumprelu"}.get(name, name)
    assert theirs.cfg.architecture() == expected
    acts, out = torch_forward(theirs, X)
    np.testing.assert_allclose(acts, np.asarray(ours.encode(X)), atol=1e-5)
    np.testing.assert_allclose(out, np.asarray(ours(X)), atol=1e-5)
    assert (acts > 0).any()
    back = load_saelens(tmp_path / name)  # and back again, unchanged
    for field in ("W_enc", "W_dec", "b_dec", "threshold", "W_skip"):
        a, b = getattr(ours, field), getattr(back, field)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back.cfg.hook_name == ours.cfg.hook_name and back.cfg.hook_name_out == ours.cfg.hook_name_out


def saelens_models(sae_lens):
    from sae_lens import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.transcoder import (
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
    )

    return {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)),
        "gated": GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "skip_transcoder": SkipTranscoder(SkipTranscoderConfig(
            d_in=D_IN, d_sae=D_SAE, d_out=7, apply_b_dec_to_input=False)),
        "jumprelu_transcoder": JumpReLUTranscoder(JumpReLUTranscoderConfig(
            d_in=D_IN, d_sae=D_SAE, d_out=7, apply_b_dec_to_input=False)),
    }


def test_written_by_saelens_loads_here_with_equal_outputs(sae_lens, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    for name, model in saelens_models(sae_lens).items():
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(0.3 * torch.randn_like(p))
            if hasattr(model, "threshold"):
                model.threshold.abs_()
        model.save_model(tmp_path / name)
        ours = load_saelens(tmp_path / name)
        acts, out = torch_forward(model, X)
        assert (acts > 0).any(), name
        np.testing.assert_allclose(np.asarray(ours.encode(X)), acts, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(ours(X)), out, atol=1e-5, err_msg=name)


def test_gemma_scope_params_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    params = {"W_enc": rng.normal(size=(D_IN, D_SAE)), "W_dec": rng.normal(size=(D_SAE, D_IN)),
              "b_enc": rng.normal(size=D_SAE), "b_dec": rng.normal(size=D_IN),
              "threshold": np.abs(rng.normal(size=D_SAE))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    sae = load_gemma_scope(folder, hook_name="blocks.3.hook_resid_post")
    pre = X @ params["W_enc"] + params["b_enc"]  # no b_dec subtraction in Gemma Scope
    acts = np.where(pre > params["threshold"], pre, 0.0)
    np.testing.assert_allclose(np.asarray(sae.encode(X)), acts, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae(X)), acts @ params["W_dec"] + params["b_dec"], atol=1e-4)
    del params["threshold"]
    np.savez(tmp_path / "missing.npz", **params)
    with pytest.raises(CheckpointError, match="missing threshold"):
        load_gemma_scope(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", **{**params, "threshold": np.zeros(D_SAE + 1, np.float32)})
    with pytest.raises(CheckpointError, match=r"misshaped threshold: \[41\], expected \[40\]"):
        load_gemma_scope(tmp_path / "bad.npz")


def test_sparsify_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    k = 6
    tensors = {"encoder.weight": rng.normal(size=(D_SAE, D_IN)), "encoder.bias": rng.normal(size=D_SAE),
               "W_dec": rng.normal(size=(D_SAE, D_IN)), "b_dec": rng.normal(size=D_IN)}
    tensors = {n: v.astype(np.float32) for n, v in tensors.items()}
    folder = tmp_path / "layers.3"
    folder.mkdir()
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
           "num_latents": D_SAE, "k": k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sparsify(folder, hook_name="blocks.3.hook_resid_post")
    # sparsify: relu(linear(x - b_dec)), keep the top k, decode the k rows of W_dec + b_dec
    pre = np.maximum((X - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"], 0)
    top = np.argsort(-pre, axis=1)[:, :k]
    vals = np.take_along_axis(pre, top, 1)
    out = np.einsum("nk,nkd->nd", vals, tensors["W_dec"][top]) + tensors["b_dec"]
    np.testing.assert_allclose(np.asarray(sae(X)), out, atol=1e-4)
    save_sparsify(sae, tmp_path / "again")
    again = load_sparsify(tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(again.W_enc), np.asarray(sae.W_enc))
    cfg_bad = {**cfg, "num_latents": D_SAE * 2}
    (folder / "cfg.json").write_text(json.dumps(cfg_bad))
    with pytest.raises(CheckpointError, match=r"W_enc: \[12, 40\], expected \[12, 80\]"):
        load_sparsify(folder)


def test_saelens_file_errors(tmp_path: Path) -> None:
    sae = randomised(OURS["standard"])
    save_saelens(sae, tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "cfg.json").read_text())
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "temporal"}))
    with pytest.raises(CheckpointError, match="unknown SAELens architecture 'temporal'"):
        load_saelens(tmp_path / "ok")
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 41}))
    with pytest.raises(CheckpointError, match=r"W_enc: \[12, 40\], expected \[12, 41\]"):
        load_saelens(tmp_path / "ok")
    save_file({"W_enc": np.zeros((D_IN, D_SAE), np.float32)}, str(tmp_path / "ok" / "sae_weights.safetensors"))
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing W_dec, b_dec, b_enc"):
        load_saelens(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="No cfg.json"):
        load_saelens(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="SAELens has no topk transcoder"):
        save_saelens(randomised(SAEConfig(D_IN, D_SAE, "topk", k=3, d_out=7)), tmp_path / "tc")
