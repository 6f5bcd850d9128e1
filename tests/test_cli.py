"""The jaxinterp command: help, listing, and a tiny end-to-end training run with resume."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxinterp import cli
from jaxinterp.errors import ConfigError
from jaxinterp.recipes.lm import LMConfig, load_model


def test_help_explains_each_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for word in ("demo", "train", "experiment"):
        assert word in out


def test_help_imports_no_recipe():
    """`jaxinterp --help` lists the commands without importing a recipe (a command imports its
    own when it runs; a fresh process, as this one has imported them all)."""
    code = ("import sys\nfrom jaxinterp import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n"
            "    print('RECIPES', sorted(m for m in sys.modules if m.startswith('jaxinterp.recipes.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}).stdout
    assert "experiment" in out and out.splitlines()[-1] == "RECIPES []", out[-300:]


def test_flags_come_from_the_dataclass(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--d-model" in out and "--attn-only" in out and "(default: 128)" in out


def test_experiment_list(capsys):
    assert cli.main(["experiment", "--list"]) == 0
    assert "train-lm" in capsys.readouterr().out


def test_unknown_experiment_is_a_clear_error(capsys):
    assert cli.main(["experiment", "trian-lm"]) == 2
    assert re.search("error: Unknown experiment 'trian-lm'.*train-lm", capsys.readouterr().err)


def test_build_config_overrides_and_rejects_unknown(tmp_path):
    parser = cli.make_parser()
    args, _ = parser.parse_known_args(["train", "--d-model", "64", "--attn-only"])
    cfg = cli.build_config(LMConfig, args)
    assert cfg.d_model == 64 and cfg.attn_only and cfg.n_layers == LMConfig.n_layers
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"d_modle": 3}))
    args, _ = parser.parse_known_args(["train", "--config", str(bad)])
    with pytest.raises(ConfigError, match="d_modle"):
        cli.build_config(LMConfig, args)


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return path


def test_train_end_to_end_and_resume(tmp_path, text_corpus, capsys):
    args = ["train", "--name", "tiny", "--runs-dir", str(tmp_path), "--corpus", str(text_corpus),
            "--tokenizer", "bytes", "--seq-len", "32", "--batch-size", "4", "--n-layers", "1",
            "--d-model", "32", "--n-heads", "2", "--d-mlp", "64", "--log-every", "2",
            "--eval-every", "4", "--checkpoint-every", "4", "--warmup", "2", "--no-progress"]
    assert cli.main(args + ["--steps", "4"]) == 0
    run = tmp_path / "tiny"
    for name in ("config.json", "metrics.json", "loss.png", "attention.png", "report.md", "report.json"):
        assert (run / name).exists(), name
    # Extending the run resumes from the step-4 checkpoint instead of starting over.
    assert cli.main(args + ["--steps", "8"]) == 0
    steps = [m["step"] for m in json.loads((run / "metrics.json").read_text()) if "loss" in m]
    assert max(steps) == 8 and steps == sorted(steps)
    model = load_model(run / "model")
    assert model.cfg.d_model == 32 and model.cfg.d_vocab == 256
    report = json.loads((run / "report.json").read_text())
    # Learned something: below the loss of a uniform guess over 256 bytes.
    assert report["final_loss"] < 0.95 * math.log(256)
    # Rerunning the finished run rewrites nothing (its report, with its wall time, stays).
    before = (run / "report.json").read_bytes()
    assert cli.main(args + ["--steps", "8"]) == 0
    assert (run / "report.json").read_bytes() == before


def test_experiment_help_lists_its_settings(capsys):
    assert cli.main(["experiment", "ioi", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--steps" in out and "--checkpoint" in out


def test_train_reads_a_tfds_dataset(tmp_path):
    """The TPU users' route: a prepared tfds (array_record) dataset by name and data_dir."""
    from jaxinterp.data import write_tfds_text

    data_dir = tmp_path / "tfds"
    write_tfds_text(["a tiny corpus of words, repeated. " * 40] * 8, "tiny_text", data_dir)
    args = ["train", "--name", "tfds", "--runs-dir", str(tmp_path), "--corpus", "tfds:tiny_text",
            "--tfds-data-dir", str(data_dir), "--tokenizer", "bytes", "--seq-len", "16",
            "--batch-size", "2", "--n-layers", "1", "--d-model", "16", "--n-heads", "2",
            "--d-mlp", "32", "--steps", "2", "--log-every", "1", "--checkpoint-every", "0",
            "--warmup", "1", "--no-progress"]
    assert cli.main(args) == 0
    assert (tmp_path / "tfds" / "report.json").exists()
