"""Path patching: the effect of a sender on the metric *through* chosen receivers only.

Activation patching a head measures all of its effects at once. Path patching (Wang et
al. 2022, "Interpretability in the Wild") isolates one route: the senders' outputs are
taken from the source run, everything else is held at its base value, and the change
reaches the metric only through the receivers' inputs. With everything else frozen, a
receiver's input residual is the base one plus what the senders before it write:

    resid_in(receiver) = resid_base + sum_{sender layers l < receiver} write_l
    write_l = attn_out_l(z with the senders' heads from the source) - attn_out_l(base)
              (+ mlp_out_l(source) - mlp_out_l(base) for an MLP sender)

The receiver's layer runs on that input (with its own heads' outputs frozen the same
way), its activations (e.g. head 9.9's queries) are patched into the base run, and
everything from the first receiver layer on runs normally
(:func:`jaxinterp.models.partial.run_layers`). Senders: ``(layer, head)`` or ``(layer,
"mlp")``. Receivers: ``(layer, head, "q" | "k" | "v")``, ``(layer, "mlp")`` (the MLP's
input) or ``"logits"`` (the direct path into the unembedding; not combined with others).

Like the other sweeps the default direction is ``"denoising"``: the corrupted prompt runs
with senders from the clean one, and a rise of the metric marks a path that carries the
behaviour. The paper noises (``direction="noising"``: clean run, corrupted senders; a
drop marks the path). Both return a :class:`NamedArray` with ``attrs["clean"]`` and
``attrs["corrupted"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int

from jaxinterp.errors import ShapeError
from jaxinterp.hooks import patch, run_with_hooks
from jaxinterp.interp.metrics import Metric, batch_mean, check_metric, read_positions
from jaxinterp.interp.patching import auto_chunk_size, base_and_source, check_index, check_pair
from jaxinterp.models import components as C
from jaxinterp.models.hook_specs import BY_ALIAS, get_act_name, spec
from jaxinterp.models.partial import base_run, logits_at, positions_and_mask, run_layers
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray

Sender = tuple[int, int | str]
Receiver = tuple[int, int, str] | tuple[int, str] | str


def _check_senders(model: HookedTransformer, senders: Sequence[Sender]) -> tuple[Sender, ...]:
    cfg, out = model.cfg, []
    for s in senders:
        if not (isinstance(s, tuple | list) and len(s) == 2):
            raise ShapeError(f"a sender is (layer, head) or (layer, 'mlp'), got {s!r}")
        layer = check_index("sender layer", s[0], cfg.n_layers, "n_layers")
        if s[1] == "mlp":
            if not cfg.has_mlp:
                raise ShapeError("this model has no MLPs to send from")
            out.append((layer, "mlp"))
        elif isinstance(s[1], int | np.integer):
            out.append((layer, check_index("sender head", s[1], cfg.n_heads, "n_heads")))
        else:
            raise ShapeError(f"a sender is (layer, head) or (layer, 'mlp'), got {s!r}")
    return tuple(out)


def _check_receivers(model: HookedTransformer, receivers: Sequence[Receiver]) -> tuple[Receiver, ...]:
    cfg, out = model.cfg, []
    receivers = [receivers] if isinstance(receivers, str) else list(receivers)
    if not receivers:
        raise ShapeError("path patching needs at least one receiver")
    if "logits" in receivers and len(receivers) > 1:
        raise ShapeError("the 'logits' receiver already holds every path's end; use it alone")
    for r in receivers:
        if r == "logits":
            out.append(r)
            continue
        if isinstance(r, tuple | list) and len(r) == 3 and r[2] in ("q", "k", "v"):
            out.append((check_index("receiver layer", r[0], cfg.n_layers, "n_layers"),
                        check_index("receiver head", r[1], *BY_ALIAS[r[2]].n_heads(cfg)), r[2]))
        elif isinstance(r, tuple | list) and len(r) == 2 and r[1] == "mlp" and cfg.has_mlp:
            out.append((check_index("receiver layer", r[0], cfg.n_layers, "n_layers"), "mlp"))
        else:
            raise ShapeError(f"unknown receiver {r!r}: use (layer, head, 'q'|'k'|'v'), "
                             "(layer, 'mlp') on a model with MLPs, or 'logits'")
    return tuple(out)


def _receiver_hooks(model: HookedTransformer, r: Receiver) -> list[tuple[str, int | None]]:
    """``(hook name, head)`` of the activations a receiver reads its input through."""
    if r[1] == "mlp":  # the MLP's input: its pre-activations (both halves of a gated MLP)
        names = [get_act_name(a, r[0]) for a in ("pre", "pre_linear")]
        return [(n, None) for n in names if n in model.hook_names()]
    return [(get_act_name(r[2], r[0]), r[1])]


def _run(model, base_tokens, source_tokens, am, metric, receivers, read, head_w, mlp_w):
    """Batch-mean metric for each sender weighting ``head_w [T, L, H]``, ``mlp_w [T, L]``."""
    cfg = model.cfg
    n_pos = base_tokens.shape[1]
    positions, mask = positions_and_mask(base_tokens, am)
    names = [f"blocks.*.{BY_ALIAS[a].name}" for a in ("z", "attn_out", "mlp_out")[:2 + cfg.has_mlp]]
    base, bc = base_run(model, base_tokens, am, names)
    source, sc = base_run(model, source_tokens, am, names)
    z_base, attn_base = bc.stacked(names[0]), bc.stacked(names[1])
    dz = sc.stacked(names[0]) - z_base  # [L, B, P, H, e]
    dmlp = sc.stacked(names[2]) - bc.stacked(names[2]) if cfg.has_mlp else None
    index = None if read is None else jnp.broadcast_to(jnp.asarray(read), (base_tokens.shape[0], len(read)))
    layers = sorted({r[0] for r in receivers if r != "logits"})

    def at_read(name: str, value):  # the last layer queries at the read positions only
        hook = spec(name)
        if read is None or hook.at_keys or int(name.split(".")[1]) != cfg.n_layers - 1:
            return value
        return jnp.take(value, jnp.asarray(read), axis=hook.axis("pos"))

    def measure(final):
        x = final if read is None else final[:, jnp.asarray(read)]
        return batch_mean(metric, logits_at(model, x, read, n_pos))

    def one(hw: Float[ArrayLike, "L H"], mw: Float[ArrayLike, " L"]):
        z_new = z_base + hw[:, None, None, :, None] * dz
        attn = jax.vmap(lambda p, z: C.attn_output(cfg, p, z))(model.blocks, z_new)
        writes = jnp.where(hw.any(-1)[:, None, None, None], attn - attn_base, 0.0)
        writes = writes + (mw[:, None, None, None] * dmlp if cfg.has_mlp else 0.0)
        before = jnp.cumsum(writes, axis=0) - writes  # what layers < l wrote
        if receivers == ("logits",):
            return measure(base.final + writes.sum(0))
        ivs = []
        for layer in layers:  # run the receiver's layer on its path-patched input
            hooks = [h for r in receivers if r[0] == layer for h in _receiver_hooks(model, r)]
            z_iv = patch(get_act_name("z", layer), z_new[layer])

            def run(x, layer=layer):
                return run_layers(model, x, positions, mask, start=layer, stop=layer + 1)[0]

            _, cache = run_with_hooks(run, base.resid_pre[layer] + before[layer], interventions=[z_iv],
                                      names=[n for n, _ in hooks])
            ivs += [patch(n, at_read(n, cache[n]), head=head) for n, head in hooks]

        def rest(x):
            return run_layers(model, x, positions, mask, start=layers[0], read=index)[0]

        x = run_with_hooks(rest, base.resid_pre[layers[0]], interventions=ivs)
        return batch_mean(metric, logits_at(model, x, read, n_pos))

    values = jax.lax.map(lambda w: jax.vmap(one)(*w), (head_w, mlp_w))
    return values, measure(base.final), measure(source.final)


_run_jit = eqx.filter_jit(_run)


def _prepare(model, clean_tokens, corrupted_tokens, metric, receivers, direction, attention_mask):
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, attention_mask)
    base_tokens, source_tokens = base_and_source(clean, corrupted, direction)
    check_metric(metric)
    am = None if attention_mask is None else jnp.asarray(attention_mask)
    read = read_positions(metric, clean.shape[1])
    return base_tokens, source_tokens, am, _check_receivers(model, receivers), read


def _attrs(direction, receivers, base_m, source_m, **more) -> dict:
    clean, corrupted = (source_m, base_m) if direction == "denoising" else (base_m, source_m)
    return {"direction": direction, "receivers": [str(r) for r in receivers], "clean": float(clean),
            "corrupted": float(corrupted), **more}


def path_patching(
    model: HookedTransformer,
    clean_tokens: Int[ArrayLike, "batch pos"],
    corrupted_tokens: Int[ArrayLike, "batch pos"],
    metric: Metric,
    senders: Sequence[Sender],
    receivers: Sequence[Receiver] | str,
    *,
    direction: str = "denoising",
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
) -> NamedArray:
    """Batch-mean metric with the paths ``senders -> receivers`` patched (module docstring).

    Returns a 0-d :class:`NamedArray` (``float(result)`` is the metric) with ``attrs``
    ``clean``/``corrupted`` (so ``result.normalized()`` works), ``senders``, ``receivers``
    and ``direction``.
    """
    base_tokens, source_tokens, am, receivers, read = _prepare(
        model, clean_tokens, corrupted_tokens, metric, receivers, direction, attention_mask)
    cfg = model.cfg
    senders = _check_senders(model, senders)
    head_w, mlp_w = np.zeros((1, 1, cfg.n_layers, cfg.n_heads), np.float32), np.zeros((1, 1, cfg.n_layers), np.float32)
    for layer, what in senders:
        if what == "mlp":
            mlp_w[0, 0, layer] = 1.0
        else:
            head_w[0, 0, layer, what] = 1.0
    out, base_m, source_m = _run_jit(model, base_tokens, source_tokens, am, metric, receivers, read,
                                     jnp.asarray(head_w), jnp.asarray(mlp_w))
    attrs = _attrs(direction, receivers, base_m, source_m, senders=[str(s) for s in senders])
    return NamedArray(out[0, 0], (), {}, attrs)


def path_patching_sweep(
    model: HookedTransformer,
    clean_tokens: Int[ArrayLike, "batch pos"],
    corrupted_tokens: Int[ArrayLike, "batch pos"],
    metric: Metric,
    receivers: Sequence[Receiver] | str,
    *,
    direction: str = "denoising",
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
    chunk_size: int | None = None,
) -> NamedArray:
    """Path patching from every head on its own to ``receivers``: a ``(layer, head)`` map.

    ``chunk_size``: patched runs computed together (default: chosen from the prompt size,
    as for :func:`~jaxinterp.interp.activation_patching`). Returns a :class:`NamedArray`
    with ``attrs`` ``clean``/``corrupted`` and ``direction``.
    """
    base_tokens, source_tokens, am, receivers, read = _prepare(
        model, clean_tokens, corrupted_tokens, metric, receivers, direction, attention_mask)
    cfg = model.cfg
    chunk_size = auto_chunk_size(chunk_size, base_tokens.shape, 1)
    n = cfg.n_layers * cfg.n_heads
    n_chunks = -(-n // chunk_size)
    head_w = jnp.eye(n_chunks * chunk_size, n).reshape(n_chunks, chunk_size, cfg.n_layers, cfg.n_heads)
    mlp_w = jnp.zeros((n_chunks, chunk_size, cfg.n_layers))
    out, base_m, source_m = _run_jit(model, base_tokens, source_tokens, am, metric, receivers, read, head_w, mlp_w)
    values = out.reshape(-1)[:n].reshape(cfg.n_layers, cfg.n_heads)
    return NamedArray(values, ("layer", "head"), {}, _attrs(direction, receivers, base_m, source_m))
