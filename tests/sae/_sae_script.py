"""SAE training in a subprocess, for the tests that need a fresh process.

    python _sae_script.py RUNS NAME [--steps N] [--sleep S] [--mesh SPEC] [--reference RUNS2]
        trains a TopK SAE (sparse path, auxiliary-k loss on dead latents) on synthetic
        activations with checkpoints every 5 steps (--checkpoint-every); writes final.npz and
        result.json (then, with --reference, the same run from scratch and without checkpoints
        into RUNS2: one process, one compile).
    python _sae_script.py RUNS compare --mesh SPEC
        (under XLA_FLAGS=--xla_force_host_platform_device_count=8) trains the same SAEs
        unsharded and on the mesh, prints JSON: max differences, shardings, mesh errors.
    python _sae_script.py RUNS NAME --process I --processes N --port P --mesh SPEC
        one process of a jax.distributed run on localhost (2 CPU devices per process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--process" in sys.argv:  # before jax is imported
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxinterp.sae import SAEConfig  # noqa: E402
from jaxinterp.sae.ground_truth import SyntheticDictionary  # noqa: E402
from jaxinterp.sae.trainer import TrainSAEConfig, train_sae  # noqa: E402

D, WIDTH = 16, 64


def saes() -> dict[str, SAEConfig]:
    return {"topk": SAEConfig(D, WIDTH, "topk", k=4)}


def data() -> np.ndarray:
    return SyntheticDictionary(d=D, n_features=32).sample(8192)


def run(runs: str, name: str, steps: int, mesh: str = "", sleep: float = 0.0, ckpt: int = 5):
    x = data()

    def batches(step: int) -> np.ndarray:  # a callable source: the sleep makes kills land mid-run
        time.sleep(sleep)
        rows = np.random.default_rng(step).integers(0, len(x), 128)
        return x[rows]

    cfg = TrainSAEConfig(steps=steps, batch_size=128, lr=3e-3, dead_after_tokens=128 * 4,
                         checkpoint_every=ckpt, log_every=5,
                         mesh=mesh, progress=False, runs_dir=runs, name=name)
    return train_sae(saes(), batches, cfg)


def host(tree):
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree)


def params_of(result) -> dict[str, np.ndarray]:
    out = {}
    for name, sae in result.saes.items():
        for field in ("W_enc", "b_enc", "W_dec", "b_dec"):
            out[f"{name}.{field}"] = getattr(sae, field)
    return host(out) if jax.process_count() > 1 else {k: np.asarray(v) for k, v in out.items()}


def compare(runs: str, mesh: str) -> dict:
    from jaxinterp.errors import ConfigError

    plain = params_of(run(runs, "plain", 12, ckpt=0))  # checkpoints do not change results
    np.savez(f"{runs}/plain.npz", **plain)
    result = run(runs, "sharded", 12, mesh=mesh, ckpt=0)
    sharded = params_of(result)
    spec = str(result.saes["topk"].W_enc.sharding.spec)
    try:
        train_sae(SAEConfig(D, 60, "topk", k=4), data(),
                  TrainSAEConfig(steps=1, batch_size=128, mesh="data=1,model=8", progress=False,
                                 runs_dir=runs, name="bad"))
        error = ""
    except ConfigError as e:
        error = str(e)
    diffs = {k: float(np.abs(plain[k] - sharded[k]).max()) for k in plain}
    return {"devices": jax.device_count(), "max_diff": max(diffs.values()),
            "scale": max(float(np.abs(v).max()) for v in plain.values()), "W_enc_spec": spec,
            "bad_mesh_error": error}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs")
    p.add_argument("name")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--mesh", default="")
    p.add_argument("--process", type=int)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reference", default="")
    p.add_argument("--checkpoint-every", type=int, default=5)
    a = p.parse_args()
    if a.name == "compare":
        print(json.dumps(compare(a.runs, a.mesh)))
        return
    if a.process is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{a.port}", num_processes=a.processes,
                                   process_id=a.process)
    for runs, ckpt in ((a.runs, a.checkpoint_every), (a.reference, 0)):  # the reference saves nothing
        if not runs:
            continue
        result = run(runs, a.name, a.steps, mesh=a.mesh, sleep=a.sleep, ckpt=ckpt)
        params = params_of(result)
        if jax.process_index() == 0:
            np.savez(result.run_dir / "final.npz", **params)
            (result.run_dir / "result.json").write_text(json.dumps(
                {"resumed_from": result.resumed_from, "processes": jax.process_count(),
                 "devices": jax.device_count()}))


if __name__ == "__main__":
    main()
