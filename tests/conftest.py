"""Shared test settings (tiny configs, CPU-friendly defaults) and the models trained once per
test process that several packages' tests use."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Compiling is most of a test's time on CPU: with a warm compile cache tests/models runs in a
# fifth of its CPU time. LLVM's backend optimisation level 0 compiles about 40% faster and
# leaves XLA's program (HLO, fusions) as it is, though it rounds slightly differently (no
# fused multiply-adds); the tiny test shapes never miss the faster code. Set before any
# backend starts; subprocesses (the CLI tests) and most notebook kernels inherit it
# (tests/colab/_runner.py).
from o0_flags import COMPILE_FAST_FLAGS, O0_FLAGS, OPTIMISED  # noqa: E402

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *O0_FLAGS]).strip()
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] = " ".join([os.environ["XLA_FLAGS"], *COMPILE_FAST_FLAGS])

import pytest  # noqa: E402

# The files that take longest (CPU seconds on 2 cores), longest first. Under `make test`
# (`-n <cores + 1> --dist loadfile`) each file runs whole on one worker and a worker that runs out of
# work takes the next file in collection order, so these go first and the workers finish
# together. xdist's own order (most tests first) started the notebooks last, leaving one
# worker alone with them at the end. Measure with the CPU-time plugin when a file grows.
LONGEST_FIRST = (
    "colab/test_notebooks.py", "colab/test_main_job_notebooks.py", "test_readme.py",
    "circuits/test_eap.py", "interp/test_activation_patching.py", "sae/test_trainer.py",
    "models/test_transformer.py", "interp/test_patching_families.py", "models/test_generate.py",
    "features/test_analysis.py", "models/test_toy_train.py", "interp/test_attribution_patching.py",
    "test_cli.py", "sae/test_architectures.py", "io/test_hf.py", "models/test_process.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {f"tests/{name}": i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


def _train_ioi(cfg, lr: float, steps: int):
    """A local optax loop on IOI prompts (the answer token's loss)."""
    import equinox as eqx
    import jax
    import optax

    from jaxinterp.data.ioi import ioi_batch
    from jaxinterp.models import init_transformer
    from jaxinterp.recipes.ioi import ioi_loss

    model = init_transformer(cfg, jax.random.key(0))
    data = ioi_batch(64 * 40, seed=1)
    opt = optax.adam(lr)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    def step(params, state, tokens, io):
        grads = jax.grad(lambda p: ioi_loss(eqx.combine(p, static), tokens, io)[0])(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    # Hundreds of steps of one program: compiled at XLA's default optimisation level, not the
    # tests' -O0 (350 steps: 10 instead of 16 CPU-s).
    step = jax.jit(step).lower(params, state, data.clean[:64], data.io[:64]).compile(OPTIMISED)
    for i in range(steps):
        j = (i % 40) * 64
        params, state = step(params, state, data.clean[j:j + 64], data.io[j:j + 64])
    return eqx.combine(params, static)


def _trained_once(tmp_path_factory, name: str, cfg, lr: float, steps: int):
    """``_train_ioi(cfg, lr, steps)``, trained once per test run: under xdist the first worker
    to ask trains and saves the weights in the run's shared temporary folder, and the others
    wait for it and load them (bitwise the same model; the data and seeds are fixed)."""
    import jax
    from run_once import run_folder, run_lock

    from jaxinterp.io.weights import load_weights, save_weights
    from jaxinterp.models import init_transformer

    root = run_folder(tmp_path_factory)
    if root is None:
        return _train_ioi(cfg, lr, steps)
    path = root / f"{name}-{steps}.safetensors"
    with run_lock(root, name):
        if not path.exists():
            model = _train_ioi(cfg, lr, steps)
            save_weights(path, model)  # atomic: written aside, then renamed
            return model
    return load_weights(path, init_transformer(cfg, jax.random.key(0)))


@pytest.fixture(scope="session")
def ioi_model(tmp_path_factory):
    """A 2-layer d_model 32 model trained on IOI to 100% accuracy in a few seconds (the interp
    and circuits tests share it)."""
    from jaxinterp.recipes.ioi import ioi_config

    return _trained_once(tmp_path_factory, "ioi_model", ioi_config(d_model=32, n_heads=4), 4e-3, 350)


@pytest.fixture(scope="session")
def ioi_gemma2(tmp_path_factory):
    """A 2-layer Gemma 2 (a local layer with a 12-token window, then a global one) trained on
    IOI to 100% accuracy: the window hides the first name from the answer position in layer 0."""
    from jaxinterp.data.ioi import TEMPLATE, VOCAB
    from jaxinterp.models import gemma2_config

    cfg = gemma2_config(d_model=32, n_layers=2, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
                        d_vocab=len(VOCAB), n_ctx=len(TEMPLATE), window_size=12, query_pre_attn_scalar=8.0,
                        attn_types=("local", "global"), init_range=0.05)
    return _trained_once(tmp_path_factory, "ioi_gemma2", cfg, 1e-2, 200)
