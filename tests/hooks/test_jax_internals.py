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


def test_a_vmaps_batch_can_be_read_and_rewrapped():
    assert internals.HAVE_BATCH_TRACE, (
        "jax._src.interpreters.batching.BatchTrace/BatchTracer or core.set_current_trace is "
        "gone: hooks inside a model's own vmap cannot see the batch. Update _jax_internals.py.")
    seen = {}

    def outer(xs):
        target = internals.current_trace()

        def inner(x):
            chain = internals.vmap_chain(target)
            with internals.outer_trace(target):
                whole = internals.unbatch(x, chain)
                seen["whole"] = whole * 1.0
                doubled = whole * 2.0
            return internals.rebatch(doubled, chain) + 1.0

        return jax.vmap(inner, in_axes=1, out_axes=1)(xs)

    xs = jnp.arange(6.0).reshape(2, 3)
    out = jax.jit(lambda a: (outer(a), seen["whole"]))(xs)
    assert jnp.array_equal(out[0], 2 * xs + 1)
    assert jnp.array_equal(out[1], xs.T)  # the vmapped axis first


def test_inner_transforms_are_named_from_the_call_stack():
    depth = internals.frame_depth()
    names = []

    def probe(x):
        names.append(internals.transform_between(depth))
        return x

    x = jnp.ones(2)
    jax.lax.scan(lambda c, _: (probe(c), None), x, None, length=2)
    jax.checkpoint(probe)(x)
    jax.lax.cond(True, probe, lambda a: a, x)
    jax.jit(probe)(x)
    jax.vmap(probe)(jnp.ones((2, 2)))
    assert names == ["lax.scan", "jax.checkpoint", "lax.cond", "jax.jit", "jax.vmap"], (
        f"JAX's files or functions moved ({names}): update _JAX_FRAMES in _jax_internals.py")
