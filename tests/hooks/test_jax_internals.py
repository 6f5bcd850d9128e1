"""The private JAX the hook core relies on is still there (see hooks/_jax_internals.py)."""

import jax
import jax.numpy as jnp

from jaxinterp.hooks import _jax_internals as internals


def test_trace_context_is_available():
    assert internals.HAVE_TRACE_CTX, (
        "jax._src.core.trace_ctx is gone in this JAX: jaxinterp cannot detect hooks reached in "
        "nested traces (NestedTraceError). Update hooks/_jax_internals.py for this JAX version.")


def test_eager_and_traced_are_told_apart():
    assert internals.is_eager(), "EvalTrace is no longer the eager trace's class name"
    seen = []
    jax.jit(lambda x: seen.append(internals.is_eager()) or x)(jnp.ones(2))
    assert seen == [False]


def test_traces_differ_inside_nested_transforms():
    outer = []

    def f(x):
        outer.append(internals.current_trace())
        return jax.vmap(lambda y: outer.append(internals.current_trace()) or y)(x)

    jax.jit(f)(jnp.ones((2, 2)))
    assert outer[0] is not None and outer[0] is not outer[1]


def test_jaxpr_key_is_equal_for_equal_programs():
    a = jax.make_jaxpr(lambda x: x * 2 + 1)(1.0)
    b = jax.make_jaxpr(lambda y: y * 2 + 1)(3.0)
    c = jax.make_jaxpr(lambda x: x * 3)(1.0)
    assert internals.jaxpr_key(a) == internals.jaxpr_key(b) != internals.jaxpr_key(c)
