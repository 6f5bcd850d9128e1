"""Tiny training problems shared by the train tests, and a script run in a subprocess.

As a script (used by the SIGKILL resume test)::

    python tests/train/_train_tiny.py RUNS_DIR NAME [--steps N] [--sleep S]

trains the MLP below with checkpoints every 5 steps, then writes ``final.npz`` (the
parameters) and ``result.json`` (where it resumed from) in the run folder. With
``--mesh`` (run under ``XLA_FLAGS=--xla_force_host_platform_device_count=4``) it shards
the MLP over all devices, trains 12 steps straight and 8 + 4 resumed, and prints JSON
saying whether the two agree bitwise and where the parameters ended up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxinterp.io.weights import save_weights
from jaxinterp.train import TrainConfig, TrainResult, train

D_IN, D_HIDDEN = 4, 8
OPTIMIZER = optax.adam(1e-2)  # one object, so every run shares one compiled step


def init_mlp(seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights, drawn with numpy (no XLA compile: subprocesses start faster)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(D_IN, D_HIDDEN)) * 0.5).astype(np.float32),
        "b1": np.zeros(D_HIDDEN, np.float32),
        "w2": (rng.normal(size=(D_HIDDEN, 1)) * 0.5).astype(np.float32),
    }


def mlp_loss(params: dict, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Regression of sin(sum x), with dropout so the per-step key matters."""
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"][None, :])
    keep = jax.random.bernoulli(key, 0.9, hidden.shape)
    pred = (jnp.where(keep, hidden, 0.0) / 0.9) @ params["w2"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    poison = jnp.where(batch["poison"], jnp.nan, 0.0)  # lets a test make step k non-finite
    return loss + poison, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def mlp_batch(step: int, poison_from: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    x = rng.normal(size=(16, D_IN)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True))
    poison = np.asarray(poison_from is not None and step >= poison_from)
    return {"x": x, "y": y, "poison": poison}


def run_mlp(
    runs_dir: str | Path,
    name: str,
    *,
    steps: int = 20,
    checkpoint_every: int = 5,
    sleep: float = 0.0,
    poison_from: int | None = None,
    fingerprint: dict | None = None,
    **config: Any,
) -> TrainResult:
    def batch_fn(step: int) -> dict[str, np.ndarray]:
        time.sleep(sleep)
        return mlp_batch(step, poison_from)

    cfg = TrainConfig(
        steps=steps,
        checkpoint_every=checkpoint_every,
        name=name,
        runs_dir=str(runs_dir),
        progress=False,
        **config,
    )
    return train(
        mlp_loss,
        init_mlp(),
        OPTIMIZER,
        batch_fn,
        cfg,
        state_fingerprint=fingerprint or {"model": "mlp", "lr": 1e-2},
    )


def mesh_check(runs_dir: str) -> dict[str, Any]:
    mesh = Mesh(np.array(jax.devices()), ("model",))
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P()}
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in init_mlp().items()}

    def run(steps: int, name: str) -> TrainResult:
        cfg = TrainConfig(
            steps=steps, checkpoint_every=4, name=name, runs_dir=runs_dir, progress=False
        )
        return train(mlp_loss, params, OPTIMIZER, mlp_batch, cfg)

    full, _, resumed = run(12, "full"), run(8, "split"), run(12, "split")
    return {
        "devices": len(jax.devices()),
        "resumed_from": resumed.resumed_from,
        "equal": all(
            np.asarray(full.params[k]).tobytes() == np.asarray(resumed.params[k]).tobytes()
            for k in params
        ),
        "kept_sharding": all(resumed.params[k].sharding.spec == specs[k] for k in params),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs_dir")
    parser.add_argument("name", nargs="?", default="run")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--mesh", action="store_true")
    args = parser.parse_args()
    if args.mesh:
        print(json.dumps(mesh_check(args.runs_dir)))
        return
    result = run_mlp(args.runs_dir, args.name, steps=args.steps, sleep=args.sleep, log_every=5)
    save_weights(result.run_dir / "final.npz", result.params)
    (result.run_dir / "result.json").write_text(json.dumps({"resumed_from": result.resumed_from}))


if __name__ == "__main__":
    main()
