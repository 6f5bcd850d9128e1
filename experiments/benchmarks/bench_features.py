"""Benchmark: the streamed feature analysis against the forward passes it needs.

One process, one model and one SAE, interleaved rounds (each timed call blocks; the
first call of each, which compiles, is reported apart):

* ``forward``: per chunk, the model run up to the SAE's site and the SAE's sparse encode
  (:func:`jaxinterp.features.sparse.sparse_encode`), reduced to a scalar so nothing is
  skipped: the work every analysis must do at least.
* ``analysis``: :func:`jaxinterp.features.analyze_features` over the same chunks (density,
  top contexts with per-token windows, interval samples, histogram; co-occurrence off,
  since a 16k x 16k count matrix is 1 GiB; logit effects and neighbours off: they read
  weights, not tokens, and are timed once on their own as ``weights_seconds``).

``ratio = analysis / forward`` per round (target <= 1.5). Memory: the process's peak
resident set after the first calls (on ``--first-tokens``, default a quarter of ``--tokens``)
and after the full rounds: the pass keeps a state of fixed size, so it must not grow with
the number of tokens.

Run:  python experiments/benchmarks/bench_features.py --tokens 1048576 --d-sae 16384
The last line printed is a JSON object with every number.

``--first-call``: instead, the compile cost at the main job's fast sizes (``jaxinterp demo
--fast``: d_mlp 64, SAEs of 64 and 256 latents, 128 sequences of 32 tokens, chunks of 32),
each in a fresh process: the first :func:`analyze_features` call, the step's own XLA
compile time, and the steady state, with the program used for small chunks (``-O0``), the
default one, and (``--baseline PATH``) an older jaxinterp on that PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxinterp as ji
from jaxinterp.features import AnalysisSettings, analyze_features, logit_effects, nearest_features
from jaxinterp.features.analysis import site_input
from jaxinterp.features.sparse import sparse_encode
from jaxinterp.sae import SAEConfig, init_sae

SITE = "blocks.0.mlp.hook_post"


def first_call_one(program: str, d_sae: int, repeats: int) -> dict:
    """In this (fresh) process: the first :func:`analyze_features` call at the fast main job's
    sizes (compiles), the step's own compile time, and the steady state."""
    import logging

    from jaxinterp.features import analysis as A

    compiles: list[float] = []

    class Compiles(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "Finished XLA compilation of jit(step)" in message:
                compiles.append(float(message.split(" in ")[1].split()[0]))

    jax.config.update("jax_log_compiles", True)
    log = logging.getLogger("jax._src.dispatch")
    log.addHandler(Compiles())
    log.setLevel(logging.DEBUG)
    log.propagate = False
    logging.getLogger("jax._src.interpreters.pxla").setLevel(logging.ERROR)
    if program == "default" and hasattr(A, "SMALL_CHUNK_WORK"):
        A.SMALL_CHUNK_WORK = 0
    cfg = ji.gpt2_config(d_model=32, n_layers=1, n_heads=2, d_mlp=64, d_vocab=512, n_ctx=32)
    model = ji.init_transformer(cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (128, 32), dtype=np.int32)
    sae = init_sae(SAEConfig(d_in=64, d_sae=d_sae, architecture="topk", k=8, hook_name=SITE), jax.random.key(1))
    jax.block_until_ready(sae)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        analyze_features(model, sae, tokens, batch_size=32, settings=AnalysisSettings(k=8), logits=False, neighbours=0)
        times.append(time.perf_counter() - t)
    return {"first_s": round(times[0], 2), "step_compile_s": round(sum(compiles), 2),
            "steady_s": round(statistics.median(times[1:]), 3)}


def first_call(repeats: int, baseline: str) -> None:
    """Fresh processes, programs alternating, each width: medians of ``repeats`` rounds."""
    import os
    import subprocess
    import sys

    programs = {"O0 (small chunks)": ("O0", None), "default program": ("default", None)}
    if baseline:
        programs["baseline (" + baseline + ")"] = ("default", baseline)
    rows: dict = {}
    for _ in range(repeats):
        for name, (program, path) in programs.items():
            for d_sae in (64, 256):
                env = dict(os.environ, PYTHONPATH=path) if path else dict(os.environ)
                res = subprocess.run([sys.executable, __file__, "--first-call-one", program, str(d_sae)],
                                     env=env, capture_output=True, text=True, check=True)
                rows.setdefault(f"{name}, d_sae={d_sae}", []).append(json.loads(res.stdout.strip().splitlines()[-1]))
    out = {key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in rows.items()}
    for key, r in out.items():
        print(f"{key:40s} first call {r['first_s']:6.2f} s (step compile {r['step_compile_s']:5.2f} s), "
              f"steady {r['steady_s']:.3f} s")
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1 << 20)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="sequences per chunk")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--first-tokens", type=int, default=0,
                   help="tokens of the first (compiling) calls, after which memory is read (0: a quarter)")
    p.add_argument("--first-call", action="store_true", help="measure compile cost at the fast demo sizes instead")
    p.add_argument("--baseline", default="", help="with --first-call: PYTHONPATH of an older jaxinterp to compare")
    p.add_argument("--first-call-one", nargs=2, metavar=("PROGRAM", "D_SAE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.first_call_one:
        print(json.dumps(first_call_one(a.first_call_one[0], int(a.first_call_one[1]), 2)))
        return
    if a.first_call:
        first_call(a.repeats, a.baseline)
        return

    cfg = ji.gpt2_config(d_model=128, n_layers=1, n_heads=4, d_mlp=512, d_vocab=4096, n_ctx=a.seq_len)
    model = ji.init_transformer(cfg, jax.random.key(0))
    sae = init_sae(SAEConfig(d_in=512, d_sae=a.d_sae, architecture="topk", k=a.k, hook_name=SITE), jax.random.key(1))
    n_seq = a.tokens // a.seq_len
    tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (n_seq, a.seq_len), dtype=np.int32)
    settings = AnalysisSettings(cooccurrence=False)

    @jax.jit
    def forward(model, sae, toks):
        x = site_input(model, toks, SITE)
        val, idx, n_active, _ = sparse_encode(sae, x.reshape(-1, x.shape[-1]), settings.max_active)
        return val.sum() + idx.sum() + n_active.sum()

    def run_forward(toks: np.ndarray) -> None:
        total = 0.0
        for i in range(0, len(toks), a.batch):
            total += forward(model, sae, jnp.asarray(toks[i:i + a.batch]))
        jax.block_until_ready(total)

    def run_analysis(toks: np.ndarray) -> None:
        analyze_features(model, sae, toks, batch_size=a.batch, settings=settings, logits=False, neighbours=0)

    def timed(fn, toks) -> float:
        t = time.perf_counter()
        fn(toks)
        return time.perf_counter() - t

    first = a.first_tokens // a.seq_len if a.first_tokens else n_seq // 4
    small = tokens[: max(first, a.batch)]
    out: dict = {"tokens": int(n_seq * a.seq_len), "d_sae": a.d_sae, "k": a.k, "d_in": 512,
                 "chunk_tokens": a.batch * a.seq_len, "devices": str(jax.devices()[0])}
    out["forward_first"] = timed(run_forward, small)
    out["analysis_first"] = timed(run_analysis, small)
    out["first_tokens"] = len(small) * a.seq_len
    out["rss_mb_after_first"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("progress", json.dumps(out), flush=True)   # partial numbers of a long run
    fwd, ana = [], []
    for _ in range(a.repeats):
        fwd.append(timed(run_forward, tokens))
        print("progress forward_seconds", fwd[-1], flush=True)
        ana.append(timed(run_analysis, tokens))
        print("progress analysis_seconds", ana[-1], flush=True)
    out["rss_mb_after_full"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    logit_effects(model, sae)
    nearest_features(sae, 8)
    out["weights_seconds"] = time.perf_counter() - t
    out["forward_seconds"] = fwd
    out["analysis_seconds"] = ana
    out["ratios"] = [x / y for x, y in zip(ana, fwd, strict=True)]
    out["ratio_median"] = statistics.median(out["ratios"])
    out["forward_tokens_per_s"] = out["tokens"] / statistics.median(fwd)
    out["analysis_tokens_per_s"] = out["tokens"] / statistics.median(ana)
    print(f"forward {out['forward_tokens_per_s']:,.0f} tok/s, analysis {out['analysis_tokens_per_s']:,.0f} tok/s, "
          f"ratio {out['ratio_median']:.2f} (rounds {[round(r, 2) for r in out['ratios']]}); peak RSS "
          f"{out['rss_mb_after_first']:.0f} MB after {out['first_tokens']:,} tokens, "
          f"{out['rss_mb_after_full']:.0f} MB after {out['tokens']:,}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
