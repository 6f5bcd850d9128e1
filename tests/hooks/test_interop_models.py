"""The three models of experiments/interop (NNX, linen with nn.scan(nn.remat), Equinox),
written as their communities write them: each cached, ablated, swept in one trace (equal
to single patches) and differentiated, with its own checks (issue 14)."""

import importlib.util
import pathlib

import numpy as np
import pytest

RUN = pathlib.Path(__file__).parents[2] / "experiments" / "interop" / "run.py"


@pytest.fixture(scope="module")
def interop():
    spec = importlib.util.spec_from_file_location("interop_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_common(r):
    assert r["sweep_traces"] == 1
    assert r["sweep_vs_single_max_abs"] <= 2e-6
    restored = np.asarray(r["restored_fraction"])  # [layer, pos]; prompts differ at pos 2
    np.testing.assert_allclose(restored[:, :2], 0.0, atol=1e-3)  # causal: nothing before it
    np.testing.assert_allclose(restored[-1, -1], 1.0, atol=1e-3)  # the final residual: all
    assert abs(r["ablate_last_mlp_metric"] - r["clean_metric"]) > 1e-3
    assert r["patch_with_itself_max_abs"] <= 1e-6
    grad, finite = r["grad_vs_finite_difference"]
    assert grad > 0 and abs(grad - finite) <= 1e-3 * grad
    assert r["param_grad_finite_and_nonzero"]


def test_nnx_decoder_with_layers_in_a_list(interop):
    r = interop.run_nnx(steps=0)  # training in place: test_scanned_and_silent (and run.py)
    check_common(r)
    assert r["query_pos1_zeroed_only_pos1"] and r["state_paths_unchanged"]


def test_linen_decoder_with_scanned_rematerialised_layers(interop):
    r = interop.run_linen(steps=0)
    check_common(r)
    assert r["param_tree_equals_original"] and r["output_vs_original_max_abs"] <= 1e-6


def test_per_example_equinox_transformer(interop):
    r = interop.run_equinox(steps=0)
    check_common(r)
    assert all(shape == [4, 8, 16] for shape in r["shapes_under_the_models_vmap"].values())
    assert r["untag_restores_structure"]
