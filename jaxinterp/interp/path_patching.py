"""Path patching: the effect of a sender on the metric *through* chosen receivers only.

Activation patching a head measures all of its effects at once. Path patching (Wang et
al. 2022, "Interpretability in the Wild") isolates one route: the senders' outputs are
taken from the source run, everything else is held at its base value, and the change
reaches the metric only through the receivers' inputs. With everything else frozen, a
receiver's input residual is the base one plus the senders' output differences that
write to it directly:

    resid_in(receiver) = resid_base + sum_{senders before it} (out_source - out_base)

The receiver is recomputed from that input (e.g. head 9.9's queries:
``LN1(resid_in) W_Q + b_Q``), patched into the base run, and everything downstream of
the receivers runs normally. Senders: ``(layer, head)`` or ``(layer, "mlp")``. Receivers:
``(layer, head, "q" | "k" | "v")``, ``(layer, "mlp")`` (the MLP's input) or ``"logits"``
(the direct path into the unembedding; it cannot be combined with others).

The default direction is ``"noising"`` as in the paper: run the clean prompt, senders
from the corrupted one; a large drop of the metric marks an important path.
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
from jaxinterp.interp._fast_forward import forward_cache, unembed_by_position
from jaxinterp.interp.metrics import Metric, batch_mean, check_metric
from jaxinterp.interp.patching import base_and_source, check_index, check_pair
from jaxinterp.models import components as C
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
            n = cfg.n_heads if r[2] == "q" else cfg.n_kv_heads
            out.append((check_index("receiver layer", r[0], cfg.n_layers, "n_layers"),
                        check_index("receiver head", r[1], n, "n_heads" if r[2] == "q" else "n_kv_heads"),
                        r[2]))
        elif isinstance(r, tuple | list) and len(r) == 2 and r[1] == "mlp" and cfg.has_mlp:
            out.append((check_index("receiver layer", r[0], cfg.n_layers, "n_layers"), "mlp"))
        else:
            raise ShapeError(f"unknown receiver {r!r}: use (layer, head, 'q'|'k'|'v'), "
                             "(layer, 'mlp') on a model with MLPs, or 'logits'")
    return tuple(out)


def _run(model, base_tokens, source_tokens, am, metric, receivers, head_w, mlp_w):
    """Batch-mean metric for each sender weighting ``head_w [T, L, H]``, ``mlp_w [T, L]``."""
    cfg = model.cfg
    mlp = cfg.has_mlp
    names = ("hook_resid_pre", "attn.hook_z") + (("hook_mlp_out",) if mlp else ()) + (
        ("hook_resid_mid",) if mlp and not cfg.parallel_attn_mlp else ())
    _, base_final, base = forward_cache(model, base_tokens, am, names)
    _, _, src = forward_cache(model, source_tokens, am, names)
    dz = src["attn.hook_z"] - base["attn.hook_z"]  # [L, B, P, H, e]
    dmlp = src["hook_mlp_out"] - base["hook_mlp_out"] if mlp else None
    blocks = model.blocks

    def one(hw: Float[ArrayLike, "L H"], mw: Float[ArrayLike, " L"]):
        heads = jnp.einsum("lbphe,lhed,lh->lbpd", dz, blocks.attn.W_O, hw)  # per layer
        writes = heads + (mw[:, None, None, None] * dmlp if mlp else 0)
        before = jnp.cumsum(writes, axis=0) - writes  # sum over layers < l
        if receivers == ("logits",):
            return batch_mean(metric, unembed_by_position(model, base_final + writes.sum(0)))
        ivs = []
        for r in receivers:
            layer = r[0]
            params = jax.tree.map(lambda a, i=layer: a[i], blocks)
            if r[1] == "mlp":
                seq = not cfg.parallel_attn_mlp
                x = (base["hook_resid_mid"][layer] + heads[layer] if seq else base["hook_resid_pre"][layer])
                xn = C.normalize(cfg, params.ln2, x + before[layer], "ln2")
                m = params.mlp
                if m.W_gate is not None:
                    ivs.append(patch(f"blocks.{layer}.mlp.hook_pre", jnp.einsum("bpd,dm->bpm", xn, m.W_gate)))
                pre = jnp.einsum("bpd,dm->bpm", xn, m.W_in) + (0 if m.b_in is None else m.b_in)
                name = "hook_pre_linear" if m.W_gate is not None else "hook_pre"
                ivs.append(patch(f"blocks.{layer}.mlp.{name}", pre))
                continue
            head, kind = r[1], r[2]
            xn = C.normalize(cfg, params.ln1, base["hook_resid_pre"][layer] + before[layer], "ln1")
            W, b = {"q": (params.attn.W_Q, params.attn.b_Q), "k": (params.attn.W_K, params.attn.b_K),
                    "v": (params.attn.W_V, params.attn.b_V)}[kind]
            new = jnp.einsum("bpd,hde->bphe", xn, W) + (0 if b is None else b)
            ivs.append(patch(f"blocks.{layer}.attn.hook_{kind}", new, head=head))
        return batch_mean(metric, run_with_hooks(model, base_tokens, am, interventions=ivs))

    return jax.lax.map(lambda w: jax.vmap(one)(*w), (head_w, mlp_w))


_run_jit = eqx.filter_jit(_run)


def _prepare(model, clean_tokens, corrupted_tokens, metric, receivers, direction, attention_mask):
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, attention_mask)
    base_tokens, source_tokens = base_and_source(clean, corrupted, direction)
    check_metric(metric)
    am = None if attention_mask is None else jnp.asarray(attention_mask)
    return base_tokens, source_tokens, am, _check_receivers(model, receivers)


def path_patching(
    model: HookedTransformer,
    clean_tokens: Int[ArrayLike, "batch pos"],
    corrupted_tokens: Int[ArrayLike, "batch pos"],
    metric: Metric,
    senders: Sequence[Sender],
    receivers: Sequence[Receiver] | str,
    *,
    direction: str = "noising",
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
) -> float:
    """Batch-mean metric with the paths ``senders -> receivers`` patched (module docstring)."""
    base_tokens, source_tokens, am, receivers = _prepare(
        model, clean_tokens, corrupted_tokens, metric, receivers, direction, attention_mask)
    cfg = model.cfg
    head_w, mlp_w = jnp.zeros((1, 1, cfg.n_layers, cfg.n_heads)), jnp.zeros((1, 1, cfg.n_layers))
    for layer, what in _check_senders(model, senders):
        if what == "mlp":
            mlp_w = mlp_w.at[0, 0, layer].set(1.0)
        else:
            head_w = head_w.at[0, 0, layer, what].set(1.0)
    out = _run_jit(model, base_tokens, source_tokens, am, metric, receivers, head_w, mlp_w)
    return float(out[0, 0])


def path_patching_sweep(
    model: HookedTransformer,
    clean_tokens: Int[ArrayLike, "batch pos"],
    corrupted_tokens: Int[ArrayLike, "batch pos"],
    metric: Metric,
    receivers: Sequence[Receiver] | str,
    *,
    direction: str = "noising",
    attention_mask: Int[ArrayLike, "batch pos"] | None = None,
    chunk_size: int = 8,
) -> NamedArray:
    """Path patching from every head on its own to ``receivers``: a ``(layer, head)`` map."""
    base_tokens, source_tokens, am, receivers = _prepare(
        model, clean_tokens, corrupted_tokens, metric, receivers, direction, attention_mask)
    cfg = model.cfg
    n = cfg.n_layers * cfg.n_heads
    n_chunks = -(-(n + 1) // chunk_size)  # one more run, with no sender: the base metric
    head_w = jnp.eye(n_chunks * chunk_size, n).reshape(n_chunks, chunk_size, cfg.n_layers, cfg.n_heads)
    mlp_w = jnp.zeros((n_chunks, chunk_size, cfg.n_layers))
    out = _run_jit(model, base_tokens, source_tokens, am, metric, receivers, head_w, mlp_w).reshape(-1)
    values = out[:n].reshape(cfg.n_layers, cfg.n_heads)
    attrs = {"receivers": [str(r) for r in receivers], "direction": direction, "base": float(out[n])}
    return NamedArray(values, ("layer", "head"), {}, attrs)
