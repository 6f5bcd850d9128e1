"""The LLVM -O0 flags the tests compile with (tests/conftest.py sets them; subprocesses and
most notebook kernels inherit them, tests/colab/_runner.py). A module of its own: every test
package has a `conftest`, so `from conftest import ...` would pick whichever was imported last."""

O0_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")

# XLA CPU's older elemental emitters instead of its MLIR fusion emitters, for every test process
# (the notebook kernel at the default level too): compiling is most of a test's time, and these
# compile much faster. Whole suite, quiet, 2 workers: 1,411 -> 812 CPU-s, 12:58 -> 8:02, all
# tests passing. A setting for the tests only: at XLA's default level they compiled 13-29%
# faster but ran a TopK SAE training step 1.5x slower (bench_compile_flags.py, RESULTS.md). A
# jaxlib that drops the flag fails at start with "Unknown flags in XLA_FLAGS": remove it here then.
COMPILE_FAST_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)

# Per-program override back to XLA's defaults, for the few test-local loops that run one small
# program hundreds of times (there -O0's slower code costs more than its faster compile saves):
# ``jax.jit(f).lower(*args).compile(OPTIMISED)``.
OPTIMISED = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
