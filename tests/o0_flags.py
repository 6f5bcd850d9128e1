"""The LLVM -O0 flags the tests compile with (tests/conftest.py sets them; subprocesses and
most notebook kernels inherit them, tests/colab/_runner.py). A module of its own: every test
package has a `conftest`, so `from conftest import ...` would pick whichever was imported last."""

O0_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")

# Per-program override back to XLA's defaults, for the few test-local loops that run one small
# program hundreds of times (there -O0's slower code costs more than its faster compile saves):
# ``jax.jit(f).lower(*args).compile(OPTIMISED)``.
OPTIMISED = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
