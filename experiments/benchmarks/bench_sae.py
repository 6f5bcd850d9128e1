"""Benchmark: the SAE training step against the machine's matmul rate, SAELens, and its floor.

Everything is measured in one process (medians of ``--repeats`` timed calls after a
warm-up call; compile times are reported separately):

* ``matmul_gflops``: a square 2048^3 float32 matmul, jitted.
* ``step_seconds``: one full training step of jaxinterp's SAE trainer (the compiled step
  of :func:`jaxinterp.train.train`: loss, gradients, Adam update, NaN guard and the SAE
  post-step), float32. Its work is counted as ``10 * batch * d_in * d_sae`` FLOPs (the
  five batch-sized matmuls of a dense step: encoder and decoder forward, the decoder's
  two gradients and the encoder's weight gradient), and ``step_rate = that / step_seconds``
  is compared with the matmul rate.
* ``--arch relu``: SAELens's own training step on the same shapes (``StandardTrainingSAE``:
  ``training_forward_pass``, ``backward``, ``torch.optim.Adam.step``), beside it.
* ``--arch topk``: the sparse TopK step, the dense TopK step (dense activations and
  decoder), and the floor: the dense encoder forward matmul plus the top-k selection plus
  the optimizer update, each timed on its own.
* ``--store``: the activation store's generation rate (tokens/s through a model, here a
  1-layer GPT-2-style model with d_mlp = d_in, reading ``blocks.0.mlp.hook_post``) beside
  the training rate (tokens/s of the step).

Run:  python experiments/benchmarks/bench_sae.py --json --arch relu --d-in 512 --d-sae 16384 --batch 4096
      python experiments/benchmarks/bench_sae.py --arch topk --k 32 --d-in 768 --d-sae 65536 --batch 4096
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import SAEConfig, init_sae
from jaxinterp.sae.callbacks import PostStep, init_state
from jaxinterp.sae.sharding import make_mesh
from jaxinterp.sae.trainer import TrainSAEConfig, _Loss, _optimizer
from jaxinterp.train.step import make_train_step


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rounds(fns: dict, n: int) -> dict[str, list[float]]:
    """Each callable (which blocks) timed once per round, interleaved, after one warm-up
    call each (whose time is kept as ``<name>_first``): slow drifts of a shared machine's
    load then hit every measurement of a round alike, and ratios are taken per round."""
    out = {f"{k}_first": [once(f)] for k, f in fns.items()}
    for _ in range(n):
        for k, f in fns.items():
            out.setdefault(k, []).append(once(f))
    return out


def matmul_fn():
    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (2048, 2048), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)

    def run():  # three products, so one measurement is not a single short call
        for _ in range(3):
            f(a, b).block_until_ready()

    return run


MATMUL_FLOPS = 3 * 2 * 2048**3


def our_step(cfg: SAEConfig, batch: int, sparse: bool = True):
    """The trainer's compiled step (same loss, optimizer, post-step and guard as train_sae)."""
    sae = init_sae(cfg, jax.random.key(0))
    x = jax.random.normal(jax.random.key(2), (batch, cfg.d_in), jnp.float32)
    tc = TrainSAEConfig(steps=10_000, batch_size=batch, lr=1e-4, sparse_topk=sparse)
    loss = _Loss((("sae", ("x", None)),), (("sae", (1.0, 1.0)),), 1000, 0, sparse)
    post = PostStep((("sae", cfg),), 1000)
    opt = _optimizer(tc.lr, 0, 0, tc.steps, tc.adam_beta1, tc.adam_beta2)
    params, static = eqx.partition({"sae": sae}, eqx.is_inexact_array)
    state = {"sae": init_state(cfg, make_mesh(""))}
    step_fn = make_train_step(loss, opt, static, None, post_step=post, with_state=True)
    carry = [params, opt.init(params), state, jnp.asarray(-1, jnp.int32)]
    key = jax.random.key(0)

    def one():
        p, o, s, bad, loss_v, _ = step_fn(*carry, {"x": x}, key, np.int32(0))
        carry[:] = [p, o, s, bad]
        loss_v.block_until_ready()

    return one


def saelens_step(d_in: int, d_sae: int, batch: int):
    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d_in)

    def one():
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={"l1": 5.0}, dead_neuron_mask=None, n_training_steps=0,
            is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return one


def topk_floor(cfg: SAEConfig, batch: int) -> dict:
    """The encoder forward matmul, the top-k selection, and the Adam update, as callables."""
    sae = init_sae(cfg, jax.random.key(0))
    x = jax.random.normal(jax.random.key(2), (batch, cfg.d_in), jnp.float32)
    enc = jax.jit(lambda s, x: s.hidden_pre(x))
    pre = enc(sae, x)
    topk = jax.jit(lambda p: jax.lax.top_k(p, cfg.k))
    opt = _optimizer(1e-4, 0, 0, 10_000, 0.9, 0.999)
    params = {"sae": sae}
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = opt.init(params)
    update = jax.jit(lambda p, o, g: opt.update(g, o, p), donate_argnums=(1,))
    carry = [opt_state]

    def upd():
        _, o = update(params, carry[0], grads)
        carry[0] = o
        jax.block_until_ready(o)

    return {"encoder_matmul": lambda: enc(sae, x).block_until_ready(),
            "top_k": lambda: jax.block_until_ready(topk(pre)),
            "optimizer": upd}


def store_rate(d_in: int, batch: int) -> float:
    """Activation-store generation tokens/s: a 1-layer model with d_mlp = d_in."""
    import jaxinterp as ji
    from jaxinterp.sae.store import ActivationStore

    cfg = ji.gpt2_config(d_model=256, n_layers=1, n_heads=4, d_mlp=d_in, d_vocab=4096, n_ctx=128)
    model = ji.init_transformer(cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 4096, (256, 128))
    store = ActivationStore(model, tokens, "blocks.0.mlp.hook_post", batch_size=batch,
                            buffer_tokens=4 * batch, model_batch=32)
    store(0)  # compile and a first generation
    store.generated_tokens, store.generation_seconds = 0, 0.0
    for g in range(1, 4):
        store(g * store.steps_per_generation)
    return store.tokens_per_second()


def median(v: list[float]) -> float:
    return statistics.median(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="relu", choices=["relu", "topk"])
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (medians are reported)")
    p.add_argument("--no-saelens", action="store_true")
    p.add_argument("--no-dense", action="store_true", help="skip the dense TopK step")
    p.add_argument("--store", action="store_true", help="also time the activation store")
    p.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    a = p.parse_args()
    out: dict = {"arch": a.arch, "d_in": a.d_in, "d_sae": a.d_sae, "batch": a.batch, "k": a.k,
                 "device": str(jax.devices()[0].platform), "jax": jax.__version__, "rounds": a.repeats}
    flops = 10 * a.batch * a.d_in * a.d_sae
    fns = {"matmul": matmul_fn()}
    if a.arch == "relu":
        fns["step"] = our_step(SAEConfig(a.d_in, a.d_sae, "standard"), a.batch)
        if not a.no_saelens:
            fns["saelens"] = saelens_step(a.d_in, a.d_sae, a.batch)
    else:
        cfg = SAEConfig(a.d_in, a.d_sae, "topk", k=a.k)
        fns["step"] = our_step(cfg, a.batch, sparse=True)
        fns.update(topk_floor(cfg, a.batch))
        if not a.no_dense:
            fns["dense_step"] = our_step(cfg, a.batch, sparse=False)
    t = rounds(fns, a.repeats)
    n = a.repeats
    out["compile_seconds"] = t["step_first"][0] - median(t["step"])
    out["matmul_gflops"] = MATMUL_FLOPS / median(t["matmul"]) / 1e9
    out["step_seconds"] = median(t["step"])
    out["step_gflops"] = flops / out["step_seconds"] / 1e9
    # per-round ratios against the matmul timed in the same round
    out["fraction_of_matmul_rate"] = median(
        [(flops / t["step"][i]) / (MATMUL_FLOPS / t["matmul"][i]) for i in range(n)])
    print(f"matmul {out['matmul_gflops']:.1f} GFLOP/s; {a.arch} step {out['step_seconds']:.3f} s = "
          f"{out['step_gflops']:.1f} GFLOP/s; per-round median {out['fraction_of_matmul_rate']:.2f} of "
          "the matmul rate (work counted as 10 * batch * d_in * d_sae)")
    if "saelens" in t:
        out["saelens_step_seconds"] = median(t["saelens"])
        out["speedup_vs_saelens"] = median([t["saelens"][i] / t["step"][i] for i in range(n)])
        print(f"SAELens step {out['saelens_step_seconds']:.3f} s: jaxinterp is "
              f"{out['speedup_vs_saelens']:.2f}x faster (per-round median)")
    if a.arch == "topk":
        parts = ("encoder_matmul", "top_k", "optimizer")
        out["floor"] = {k: median(t[k]) for k in parts}
        out["floor_seconds"] = sum(out["floor"].values())
        out["sparse_over_floor"] = median(
            [t["step"][i] / sum(t[k][i] for k in parts) for i in range(n)])
        print(f"topk sparse step {out['step_seconds']:.3f} s; floor {out['floor_seconds']:.3f} s ("
              + ", ".join(f"{k} {v:.3f}" for k, v in out["floor"].items())
              + f"): {out['sparse_over_floor']:.2f}x the floor")
        if "dense_step" in t:
            out["dense_step_seconds"] = median(t["dense_step"])
            out["dense_over_floor"] = median(
                [t["dense_step"][i] / sum(t[k][i] for k in parts) for i in range(n)])
            print(f"topk dense step {out['dense_step_seconds']:.3f} s: {out['dense_over_floor']:.2f}x the floor")
    if a.store:
        out["store_tokens_per_s"] = store_rate(a.d_in, a.batch)
        out["train_tokens_per_s"] = a.batch / out["step_seconds"]
        print(f"activation store {out['store_tokens_per_s']:,.0f} tokens/s vs training "
              f"{out['train_tokens_per_s']:,.0f} tokens/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
