"""Named hook points and the transforms that capture or edit them.

A *hook point* is a named tag on a value: ``x = ji.hook("hook_resid_pre", x)``. It is the
identity unless a jaxinterp transform is running ``fn``; then the transform sees the value
and may record it or return a replacement. Everything happens while JAX traces ``fn``, so
the transforms are pure functions that go inside ``jit``, ``grad`` and ``vmap``::

    logits, cache = ji.run_with_cache(model, tokens, names="blocks.*.hook_resid_post")
    logits = ji.run_with_hooks(model, tokens, interventions=[
        ji.patch("blocks.*.attn.hook_z", clean["blocks.3.attn.hook_z"], layer=3, head=7)])

* ``names``: an exact name, a pattern (:mod:`jaxinterp.hooks.patterns`: ``{l}`` a whole
  layer number, ``*`` any characters within one dot-separated part, ``**`` across parts,
  ``?`` one character), a list of them, a predicate, or ``None`` (all). Only the names
  asked for are kept. The cache is a :class:`Cache`, a read-only mapping in execution
  order (``hook_embed``, ``blocks.0.*``, ``blocks.1.*``, ...) even after ``jit``; a scanned
  hook is stored once, stacked over layers (``cache.stacked(...)`` stacks loop layers too).
* Interventions (:func:`patch`, :func:`add`, :func:`edit`) are pytrees of arrays
  (``layer``, ``pos``, ``head``, sources, scales): a sweep over layers x positions x heads is
  one ``jax.vmap`` and one compilation. They apply in order; a capture sees their result.
* Nothing is silently skipped: an unknown name raises ``HookNameError`` with the nearest
  valid names (before tracing for a model with ``hook_names()``, after the run for other
  functions); a ``?`` that would miss layers 10+ is an error; a ``layer=`` that never
  applies is an error (a traced one that can reach one layer only, a warning); one name
  reached twice in a run warns.
* Layers stacked on a leading axis run under :func:`scan_layers` (one traced layer, compile
  time flat in depth); hooks inside it are named ``blocks.{l}.*`` and ``layer=`` selects
  the layer with ``jnp.where``, so it can be traced. A Python loop over layers names its
  hooks with ``with ji.layer_scope("blocks", i):``.

**Your own models.** The same transforms work on any JAX code:

* *Edit route*: add ``ji.hook(name, x, axes=...)`` tags (and ``layer_scope`` around each
  layer of a Python loop) to a Flax (linen or NNX), Equinox or plain-JAX model.
* *No-edit route*: bridges tag every submodule's inputs and output as
  ``{module path}.hook_in`` / ``.hook_out``. Linen: ``flax_bridge.hooked_apply(model)``
  (``model.apply`` under ``nn.intercept_methods``; names like ``blocks_0.mlp.hook_out``).
  NNX: ``nnx_bridge.tag_nnx_submodules(model)`` tags the model in place (state paths and
  Variables unchanged; ``untag`` undoes it). Equinox: ``equinox_bridge.tag_submodules(model)``
  (an ``eqx`` tree rewrite sharing the weights). ``layer=`` also reads the layer from such
  names (``blocks.2.hook_out``, ``blocks_2.hook_out``), so layer sweeps vmap there too.
* Scanned and rematerialised layers: :func:`remat` replaces ``jax.checkpoint``;
  :mod:`~jaxinterp.hooks.flax_lifted` (``scan``, ``remat``) replaces ``nn.scan`` and
  ``nn.remat``, :mod:`~jaxinterp.hooks.nnx_lifted` replaces ``nnx.scan`` and ``nnx.remat``,
  with the same arguments; hooks inside are then named per layer, captured, patched,
  swept and differentiated like :func:`scan_layers`'.
* The model's own ``jax.vmap`` (idiomatic Equinox) needs nothing: a hook inside sees the
  whole batch. Per-example models can also run the transform inside the vmap,
  ``jax.vmap(lambda x: ji.run_with_cache(model, x, names=...))(xs)``; ``pos``/``head``
  count axes from the end, so they work without a batch axis.

**What cannot work, and what to do.** A hook reached inside any other JAX transform that
starts *inside* ``fn`` (``lax.scan``, ``lax.cond``, ``jax.checkpoint``, an inner jit) lives
in a nested trace that its value cannot leave. If nobody asked for it, it is skipped; if
someone did, :class:`NestedTraceError` names the transform and the fix. An inner
``jax.jit`` (``eqx.filter_jit``, ``nnx.jit``, ``nn.jit``) works with ``inline_jit=True``:
``fn`` runs under ``jax.disable_jit()``, so inner jits are inlined into the caller's trace;
put the whole call inside your own ``jax.jit`` to keep one compiled program.
:func:`scan_layers` keeps its scan under ``inline_jit``, but a user's own
``lax.scan``/``fori_loop`` is unrolled by ``disable_jit``. Without ``inline_jit``, an inner
jit whose trace JAX has already cached never runs its Python again, so its hooks never
fire; jaxinterp cannot see that happen and reports it only as "no hook reached".
"""

from jaxinterp.hooks._carry import remat
from jaxinterp.hooks._checks import checked
from jaxinterp.hooks._core import (
    Handler,
    NestedTraceError,
    Site,
    handler_scope,
    hook,
    hook_tree,
    inline_jit_scope,
    is_hooked,
    layer_scope,
)
from jaxinterp.hooks._scan import scan_layers
from jaxinterp.hooks.interventions import Intervention, add, edit, patch
from jaxinterp.hooks.tl_hooks import HookPoint
from jaxinterp.hooks.transforms import Cache, hook_names, run_with_cache, run_with_hooks

__all__ = [
    "Cache",
    "Handler",
    "HookPoint",
    "Intervention",
    "NestedTraceError",
    "Site",
    "add",
    "checked",
    "edit",
    "handler_scope",
    "hook",
    "hook_names",
    "hook_tree",
    "inline_jit_scope",
    "is_hooked",
    "layer_scope",
    "patch",
    "remat",
    "run_with_cache",
    "run_with_hooks",
    "scan_layers",
]
