"""train(post_step=..., state=...): constraints and running state inside the compiled step,
checkpointed and resumed exactly, and guarded against NaN like the update itself."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _train_tiny import init_mlp, mlp_batch, mlp_loss

from jaxinterp.errors import NonFiniteLossError
from jaxinterp.io.checkpoint import Checkpointer
from jaxinterp.train import TrainConfig, train

OPTIMIZER = optax.adam(1e-2)


def loss_with_state(params, batch, key, state):
    loss, metrics = mlp_loss(params, batch, key)
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"][None, :])
    return loss, metrics, {"active": (hidden > 0).any(axis=0)}


def unit_columns(params, opt_state, state, aux, key, step):
    """Project w1's columns to unit norm; count steps and how often each unit was active."""
    w1 = params["w1"] / jnp.linalg.norm(params["w1"], axis=0, keepdims=True)
    state = {"steps": state["steps"] + 1, "fired": state["fired"] + aux["active"].astype(jnp.int32)}
    rate = state["fired"].astype(jnp.float32).mean() / state["steps"].astype(jnp.float32)
    return {**params, "w1": w1}, opt_state, state, {"mean_fired": rate}


def run(tmp_path: Path, name: str, steps: int, post_step=unit_columns, poison_from=None):
    state = {"steps": jnp.zeros((), jnp.int32), "fired": jnp.zeros(8, jnp.int32)}
    cfg = TrainConfig(steps=steps, checkpoint_every=4, log_every=2, name=name,
                      runs_dir=str(tmp_path), progress=False)
    return train(loss_with_state, init_mlp(), OPTIMIZER,
                 lambda s: mlp_batch(s, poison_from), cfg, post_step=post_step, state=state)


def test_post_step_applies_every_step_and_state_resumes_exactly(tmp_path: Path) -> None:
    full = run(tmp_path, "full", 12)
    norms = np.linalg.norm(np.asarray(full.params["w1"]), axis=0)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    assert int(full.state["steps"]) == 12
    assert 0 < int(full.state["fired"].sum()) <= 12 * 8
    assert "mean_fired" in full.metrics[-1]
    run(tmp_path, "split", 8)
    resumed = run(tmp_path, "split", 12)
    assert resumed.resumed_from == 8
    for a, b in zip(jax.tree.leaves((full.params, full.state)),
                    jax.tree.leaves((resumed.params, resumed.state)), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_nan_from_post_step_never_reaches_a_checkpoint(tmp_path: Path) -> None:
    def poison_at_6(params, opt_state, state, aux, key, step):
        params, opt_state, state, m = unit_columns(params, opt_state, state, aux, key, step)
        w1 = jnp.where(step >= 6, jnp.nan, params["w1"])
        return {**params, "w1": w1}, opt_state, state, m

    with pytest.raises(NonFiniteLossError, match="step 6"):
        run(tmp_path, "nan", 12, post_step=poison_at_6)
    with Checkpointer(tmp_path / "nan" / "checkpoints") as ckpt:
        assert ckpt.steps() == [4]
