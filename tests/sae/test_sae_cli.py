"""jaxinterp train-sae / eval-sae end to end on a tiny saved model, and the demo's wiring."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from jaxinterp import cli
from jaxinterp.data import ByteTokenizer
from jaxinterp.models import gpt2_config, init_transformer
from jaxinterp.recipes.lm import save_model
from jaxinterp.sae.formats import load_saelens


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    model = init_transformer(gpt2_config(d_model=16, n_layers=1, n_heads=2, d_vocab=256, n_ctx=32,
                                         d_mlp=32), jax.random.key(0))
    save_model(root / "model", model, ByteTokenizer())
    text = root / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    return root, text


def test_train_sae_then_eval_sae(tiny_model, capsys) -> None:
    root, text = tiny_model
    common = ["--model", str(root / "model"), "--tokens", str(text), "--seq-len", "32",
              "--eval-tokens", "1024", "--runs-dir", str(root)]
    assert cli.main(["train-sae", *common, "--site", "blocks.0.hook_resid_post", "--expansion", "4",
                     "--k", "4", "--steps", "10", "--batch-size", "128", "--buffer-tokens", "2048",
                     "--checkpoint-every", "10", "--name", "tr", "--no-progress"]) == 0
    run = root / "tr"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["d_sae"] == 64 and 0 < metrics["l0"] <= 4 and metrics["n_tokens"] == 1024
    assert {"fve", "ce_loss_recovered", "kl", "dead_frac", "dense_frac"} <= metrics.keys()
    assert (run / "density.png").is_file() and (run / "train" / "checkpoints").is_dir()
    sae = load_saelens(run / "sae")
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post" and sae.cfg.architecture == "topk"
    assert cli.main(["eval-sae", "--sae", str(run / "sae"), *common, "--name", "ev"]) == 0
    again = json.loads((root / "ev" / "metrics.json").read_text())
    assert again["fve"] == pytest.approx(metrics["fve"], abs=1e-6)
    assert cli.main(["train-sae", *common, "--site", "blocks.0.hook_resid_pots", "--steps", "1",
                     "--no-progress", "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "blocks.0.hook_resid_post" in err  # the nearest valid name


BAD = [
    (["demo", "--widths", "1,x"], "--widths must be positive ints"),
    (["demo", "--architecture", "relu2"], "--architecture must be one of"),
    (["demo", "--sae-lr", "-1"], "--sae-lr must be a finite number > 0"),
    (["demo", "--mesh", "data=2,tensor=2"], "Unknown mesh axes"),
    (["train-sae", "--k", "0"], "--k must be a positive int"),
    (["train-sae", "--batch-size", "4096", "--buffer-tokens", "1024"], "--buffer-tokens (1024) must hold"),
    (["train-sae", "--model", "/nonexistent"], "not a saved model folder"),
    (["eval-sae", "--sae", "/nonexistent/sae"], "no such file or folder"),
]


@pytest.mark.parametrize("argv,fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_cli_bad_input(tmp_path, capsys, argv, fragment) -> None:
    assert cli.main([*argv, "--runs-dir", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()


def test_demo_is_the_monosemanticity_job(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--widths" in out and "--d-mlp" in out and "--sae-steps" in out
    with pytest.raises(SystemExit):
        cli.main(["train-sae", "--help"])
    out = capsys.readouterr().out
    assert "--mesh" in out and "--coordinator" in out and "--architecture" in out
