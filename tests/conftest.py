"""Shared test settings (tiny configs, CPU-friendly defaults) and the models trained once per
test process that several packages' tests use."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Compiling is most of a test's time on CPU: with a warm compile cache tests/models runs in a
# fifth of its CPU time. LLVM's backend optimisation level 0 compiles about 40% faster and
# leaves XLA's program (HLO, fusions) as it is, though it rounds slightly differently (no
# fused multiply-adds); the tiny test shapes never miss the faster code. Set before any
# backend starts; subprocesses (the CLI tests) inherit it, notebook kernels do not
# (tests/colab/_runner.py).
from o0_flags import O0_FLAGS  # noqa: E402

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *O0_FLAGS]).strip()

import pytest  # noqa: E402


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

    @jax.jit
    def step(params, state, tokens, io):
        grads = jax.grad(lambda p: ioi_loss(eqx.combine(p, static), tokens, io)[0])(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    for i in range(steps):
        j = (i % 40) * 64
        params, state = step(params, state, data.clean[j:j + 64], data.io[j:j + 64])
    return eqx.combine(params, static)


@pytest.fixture(scope="session")
def ioi_model():
    """A 2-layer d_model 32 model trained on IOI to 100% accuracy in a few seconds (the interp
    and circuits tests share it)."""
    from jaxinterp.recipes.ioi import ioi_config

    return _train_ioi(ioi_config(d_model=32, n_heads=4), 4e-3, 350)


@pytest.fixture(scope="session")
def ioi_gemma2():
    """A 2-layer Gemma 2 (a local layer with a 12-token window, then a global one) trained on
    IOI to 100% accuracy: the window hides the first name from the answer position in layer 0."""
    from jaxinterp.data.ioi import TEMPLATE, VOCAB
    from jaxinterp.models import gemma2_config

    cfg = gemma2_config(d_model=32, n_layers=2, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
                        d_vocab=len(VOCAB), n_ctx=len(TEMPLATE), window_size=12, query_pre_attn_scalar=8.0,
                        attn_types=("local", "global"), init_range=0.05)
    return _train_ioi(cfg, 1e-2, 200)
