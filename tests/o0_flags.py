"""The LLVM -O0 flags the tests compile with (tests/conftest.py sets them; subprocesses and
most notebook kernels inherit them, tests/colab/_runner.py). A module of its own: every test
package has a `conftest`, so `from conftest import ...` would pick whichever was imported last."""

O0_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
