"""The superposition and double-descent recipes: settings checked up front, the CLI's
error line, and a tiny double-descent run writing every promised key and plot."""

import json

import pytest

from jaxinterp.cli import main
from jaxinterp.errors import ConfigError
from jaxinterp.recipes.double_descent import DoubleDescentConfig, run_double_descent
from jaxinterp.recipes.superposition import SuperpositionConfig


@pytest.mark.parametrize("make", [
    lambda: SuperpositionConfig(lr=float("nan")),
    lambda: SuperpositionConfig(replicas=-1),
    lambda: SuperpositionConfig(steps=-5),
    lambda: DoubleDescentConfig(sparsity=1.5),
    lambda: DoubleDescentConfig(n_hidden=0),
    lambda: DoubleDescentConfig(weight_decay=float("nan")),
    lambda: DoubleDescentConfig(warmup=float("nan")),
    lambda: DoubleDescentConfig(test_examples=0),
])
def test_bad_settings_raise_before_any_work(make):
    with pytest.raises(ConfigError):
        make()


def test_cli_prints_an_error_line_and_exits_2(capsys, tmp_path):
    code = main(["experiment", "double_descent", "--sizes", "3,x", "--runs-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: sizes must be comma-separated integers")


def test_tiny_double_descent_run_writes_results_and_plots(tmp_path):
    config = DoubleDescentConfig(runs_dir=str(tmp_path), name="dd", n_features=10, sizes="2,4,8",
                                 replicas=1, steps=60, test_examples=500, progress=False)
    summary = run_double_descent(config)
    out = tmp_path / "dd"
    results = json.loads((out / "results.json").read_text())
    assert results["T"] == [2, 4, 8] and len(results["test_loss"]) == 3
    assert summary["peak_T"] in (2, 4, 8) and results["steps"] == 60
    for name in ("double_descent.png", "hidden_vs_features.png", "report.md", "config.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["sizes"] == [2, 4, 8]
