"""train(): metrics and config files, Equinox params, NaN guard, resume and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _train_tiny import OPTIMIZER, init_mlp, mlp_batch, mlp_loss, run_mlp

from jaxinterp.errors import CheckpointError, ConfigError, NonFiniteLossError
from jaxinterp.io.checkpoint import Checkpointer
from jaxinterp.train import TrainConfig, train


def assert_params_bitwise(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_metrics_config_and_eval(tmp_path: Path) -> None:
    params = init_mlp()
    result = train(
        mlp_loss,
        params,
        optax.sgd(1e-2),
        mlp_batch,
        TrainConfig(
            steps=12, log_every=5, eval_every=6, name="m", runs_dir=str(tmp_path), progress=False
        ),
        eval_fn=lambda p, b: {"mse": mlp_loss(p, b, jax.random.key(0))[0]},
        eval_batch_fn=lambda step: mlp_batch(10_000),
    )
    run_dir = tmp_path / "m"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == result.metrics
    assert [r["step"] for r in metrics] == [5, 6, 10, 12]
    assert {"loss", "mae", "steps_per_s"} <= metrics[0].keys()
    assert "eval_mse" in metrics[1] and "loss" in metrics[3] and "eval_mse" in metrics[3]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["steps"] == 12 and config["fingerprint"] == {"train.seed": 0}
    assert np.asarray(params["w1"]).shape == (4, 8)  # caller's arrays were not donated away
    assert not (run_dir / "checkpoints").exists()


def test_tokens_per_second_for_token_batches(tmp_path: Path) -> None:
    def loss_fn(params, tokens, key):
        logits = params["emb"][tokens[:, :-1]] @ params["emb"].T
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean(), {}

    params = {"emb": jax.random.normal(jax.random.key(0), (11, 6))}
    batch_fn = lambda step: np.random.default_rng(step).integers(0, 11, (2, 5), dtype=np.int32)  # noqa: E731
    result = train(
        loss_fn,
        params,
        optax.adam(1e-2),
        batch_fn,
        TrainConfig(steps=3, log_every=3, name="t", runs_dir=str(tmp_path), progress=False),
    )
    assert result.metrics[-1]["tokens_per_s"] == pytest.approx(
        10 * result.metrics[-1]["steps_per_s"]
    )


def test_equinox_module_trains_and_resumes(tmp_path: Path) -> None:
    model = eqx.nn.MLP(4, 1, 8, 1, activation=jax.nn.gelu, key=jax.random.key(0))

    def loss_fn(m, batch, key):
        return jnp.mean((jax.vmap(m)(batch["x"]) - batch["y"]) ** 2), {}

    def run(steps: int, name: str):
        cfg = TrainConfig(
            steps=steps, checkpoint_every=4, name=name, runs_dir=str(tmp_path), progress=False
        )
        return train(loss_fn, model, optax.adam(1e-2), mlp_batch, cfg)

    full = run(12, "full")
    run(8, "split")
    resumed = run(12, "split")
    assert resumed.resumed_from == 8
    assert isinstance(resumed.params, eqx.nn.MLP) and resumed.params.activation is jax.nn.gelu
    assert_params_bitwise(resumed.params, full.params)
    assert [r["step"] for r in full.metrics] == [10, 12]
    assert [r["step"] for r in resumed.metrics] == [8, 10, 12]  # 8 was the first run's last
    assert [r["loss"] for r in resumed.metrics[1:]] == [r["loss"] for r in full.metrics]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"step 7 .*learning rate") as info:
        run_mlp(tmp_path, "nan", steps=20, checkpoint_every=5, log_every=100, poison_from=7)
    assert info.value.step == 7
    clean = run_mlp(tmp_path, "clean", steps=5)
    with Checkpointer(tmp_path / "nan" / "checkpoints") as ckpt:
        assert ckpt.steps() == [5]
        template = {
            "params": init_mlp(),
            "opt_state": OPTIMIZER.init(init_mlp()),
            "step": jnp.asarray(0, jnp.int32),
            "key": jax.random.key(0),
        }
        _, state = ckpt.restore(template)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["opt_state"]))
    assert_params_bitwise(state["params"], clean.params)


def test_mismatched_fingerprint_refuses_to_resume(tmp_path: Path) -> None:
    run_mlp(tmp_path, "fp", steps=5, fingerprint={"lr": 1e-2, "width": 8})
    with pytest.raises(CheckpointError, match=r"lr \(checkpoint 0.01, now 0.1\)"):
        run_mlp(tmp_path, "fp", steps=10, fingerprint={"lr": 1e-1, "width": 8})
    with pytest.raises(CheckpointError, match="train.seed"):
        run_mlp(tmp_path, "fp", steps=10, fingerprint={"lr": 1e-2, "width": 8}, seed=1)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax read noise
def test_corrupt_latest_checkpoint_resumes_from_older_exactly(tmp_path: Path) -> None:
    full = run_mlp(tmp_path, "c", steps=15, checkpoint_every=5)
    for f in (tmp_path / "c" / "checkpoints" / "15" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:5])
    with pytest.warns(UserWarning, match="step 15"):
        again = run_mlp(tmp_path, "c", steps=15, checkpoint_every=5)
    assert again.resumed_from == 10
    assert_params_bitwise(again.params, full.params)


def test_bad_inputs_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_every"):
        TrainConfig(steps=10, log_every=0)
    with pytest.raises(ConfigError, match="name"):
        TrainConfig(steps=10, name="../elsewhere")
    cfg = TrainConfig(steps=2, name="bad", runs_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match=r"\(scalar loss, dict of metrics\)"):
        train(lambda p, b, k: mlp_loss(p, b, k)[0], init_mlp(), optax.sgd(0.1), mlp_batch, cfg)
