"""Every hook point of the transformer, declared once: its name, its axes, where it sits.

A hook point's *layout* (which axis is the position, which the head) is a fact about the
model, and everything that touches activations needs it: interventions selecting
``pos=``/``head=``, patching plans, attribution, the cache's TransformerLens aliases. It
is written here and nowhere else. The model tags each value with its spec's axes
(:func:`tag`), so the hook layer (which sits below the models and cannot import them)
receives the layout with the value.

Axis names come from the vocabulary of :mod:`jaxinterp.typing`: ``batch``, ``pos`` (query
positions), ``key_pos``, ``head`` (attention heads, or key/value heads for ``k``/``v``),
``d_model``, ``d_head``, ``d_mlp``. Layered hooks sit inside ``blocks.{l}``.

Adding a hook point is one line in :data:`SPECS` plus the ``tag(...)`` call where the value
is computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxinterp.hooks import hook
from jaxinterp.models.config import TransformerConfig

Axes = tuple[str, ...]
RESID: Axes = ("batch", "pos", "d_model")
HEADS: Axes = ("batch", "pos", "head", "d_head")
GRID: Axes = ("batch", "head", "pos", "key_pos")
SCALE: Axes = ("batch", "pos", "one")
NEURONS: Axes = ("batch", "pos", "d_mlp")


def _always(cfg: TransformerConfig) -> bool:
    return True


def _norm(cfg: TransformerConfig) -> bool:
    return cfg.normalization_type is not None


def _rotary(cfg: TransformerConfig) -> bool:
    return cfg.positional_embedding_type == "rotary"


def _mlp(cfg: TransformerConfig) -> bool:
    return cfg.has_mlp


def _mlp_norm(cfg: TransformerConfig) -> bool:
    return cfg.has_mlp and _norm(cfg)


def _qk_norm(cfg: TransformerConfig) -> bool:
    return cfg.use_qk_norm


def _post_norm(cfg: TransformerConfig) -> bool:
    return cfg.use_normalization_before_and_after and _norm(cfg)


def _mlp_post_norm(cfg: TransformerConfig) -> bool:
    return cfg.has_mlp and _post_norm(cfg)


@dataclasses.dataclass(frozen=True)
class HookSpec:
    """One hook point: ``name`` (inside ``blocks.{l}`` when ``layered``), its ``axes``, the
    TransformerLens short ``alias`` (``"z"`` for ``attn.hook_z``) and when a config has it."""

    name: str
    axes: Axes
    layered: bool = True
    alias: str | None = None
    present: Callable[[TransformerConfig], bool] = _always

    def axis(self, name: str) -> int | None:
        """Index of axis ``name`` counted from the end (valid with or without a batch axis)."""
        return self.axes.index(name) - len(self.axes) if name in self.axes else None


# In execution order within the model and within a block.
SPECS: tuple[HookSpec, ...] = (
    HookSpec("hook_embed", RESID, False, "embed"),
    HookSpec("hook_pos_embed", RESID, False, "pos_embed",
             lambda cfg: cfg.positional_embedding_type == "standard"),
    HookSpec("hook_resid_pre", RESID, alias="resid_pre"),
    HookSpec("ln1.hook_scale", SCALE, present=_norm),
    HookSpec("ln1.hook_normalized", RESID, present=_norm),
    HookSpec("attn.hook_q", HEADS, alias="q"),
    HookSpec("attn.hook_k", HEADS, alias="k"),
    HookSpec("attn.hook_v", HEADS, alias="v"),
    HookSpec("attn.q_norm.hook_scale", ("batch", "pos", "head", "one"), present=_qk_norm),
    HookSpec("attn.q_norm.hook_normalized", HEADS, present=_qk_norm),
    HookSpec("attn.k_norm.hook_scale", ("batch", "pos", "head", "one"), present=_qk_norm),
    HookSpec("attn.k_norm.hook_normalized", HEADS, present=_qk_norm),
    HookSpec("attn.hook_rot_q", HEADS, alias="rot_q", present=_rotary),
    HookSpec("attn.hook_rot_k", HEADS, alias="rot_k", present=_rotary),
    HookSpec("attn.hook_attn_scores", GRID, alias="attn_scores"),
    HookSpec("attn.hook_pattern", GRID, alias="pattern"),
    HookSpec("attn.hook_z", HEADS, alias="z"),
    HookSpec("attn.hook_result", ("batch", "pos", "head", "d_model"), alias="result"),
    HookSpec("ln1_post.hook_scale", SCALE, present=_post_norm),
    HookSpec("ln1_post.hook_normalized", RESID, present=_post_norm),
    HookSpec("hook_attn_out", RESID, alias="attn_out"),
    HookSpec("hook_resid_mid", RESID, alias="resid_mid",
             present=lambda cfg: cfg.has_mlp and not cfg.parallel_attn_mlp),
    HookSpec("ln2.hook_scale", SCALE, present=_mlp_norm),
    HookSpec("ln2.hook_normalized", RESID, present=_mlp_norm),
    HookSpec("mlp.hook_pre", NEURONS, alias="pre", present=_mlp),
    HookSpec("mlp.hook_pre_linear", NEURONS, alias="pre_linear",
             present=lambda cfg: cfg.has_mlp and cfg.gated_mlp),
    HookSpec("mlp.hook_post", NEURONS, alias="post", present=_mlp),
    HookSpec("ln2_post.hook_scale", SCALE, present=_mlp_post_norm),
    HookSpec("ln2_post.hook_normalized", RESID, present=_mlp_post_norm),
    HookSpec("hook_mlp_out", RESID, alias="mlp_out", present=_mlp),
    HookSpec("hook_resid_post", RESID, alias="resid_post"),
    HookSpec("ln_final.hook_scale", SCALE, False, present=lambda cfg: cfg.final_norm and _norm(cfg)),
    HookSpec("ln_final.hook_normalized", RESID, False,
             present=lambda cfg: cfg.final_norm and _norm(cfg)),
)
BY_NAME: dict[str, HookSpec] = {s.name: s for s in SPECS}
BY_ALIAS: dict[str, HookSpec] = {s.alias: s for s in SPECS if s.alias}


def spec(name: str) -> HookSpec | None:
    """The spec of a hook, by suffix (``attn.hook_z``) or full name (``blocks.3.attn.hook_z``)."""
    if name in BY_NAME:
        return BY_NAME[name]
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return BY_NAME.get(".".join(parts[2:]))
    return None


def tag(name: str, x):
    """``hooks.hook(name, x)`` with the axes this registry declares for ``name``."""
    return hook(name, x, axes=BY_NAME[name].axes)


def hook_names_for(cfg: TransformerConfig) -> list[str]:
    """Every hook name of a model with this config, in execution order."""
    top = [s for s in SPECS if not s.layered and s.present(cfg)]
    pre = [s.name for s in top if not s.name.startswith("ln_final")]
    post = [s.name for s in top if s.name.startswith("ln_final")]
    block = [s.name for s in SPECS if s.layered and s.present(cfg)]
    return pre + [f"blocks.{layer}.{n}" for layer in range(cfg.n_layers) for n in block] + post


_LAYER_TYPES = ("ln1", "ln2", "ln_final", "attn", "mlp")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's ``utils.get_act_name``: a short name to the full hook name.

    ``get_act_name("resid_pre", 3) == "blocks.3.hook_resid_pre"``; ``("pattern", 1)`` ->
    ``blocks.1.attn.hook_pattern``; ``("scale", 2, "ln2")`` -> ``blocks.2.ln2.hook_scale``;
    ``("normalized", None, "ln_final")`` -> ``ln_final.hook_normalized``. A full hook name
    is returned unchanged (with ``blocks.{layer}.`` prepended when ``layer`` is given and
    the name is a block suffix).
    """
    from jaxinterp.errors import HookNameError, unknown_name_message

    short = {"attn": "pattern", "attn_logits": "attn_scores"}.get(name, name)
    if short in ("scale", "normalized"):
        if layer_type not in ("ln1", "ln2", "ln_final"):
            raise HookNameError(f"get_act_name({name!r}) needs layer_type 'ln1', 'ln2' or "
                                f"'ln_final', got {layer_type!r}")
        suffix = f"{layer_type}.hook_{short}"
        if layer_type == "ln_final":
            return suffix
    elif short in BY_ALIAS:
        suffix = BY_ALIAS[short].name
    elif spec(short) is not None:
        suffix = short
    else:
        valid = sorted(BY_ALIAS) + ["scale", "normalized"]
        raise HookNameError(unknown_name_message("activation name", name, valid))
    s = spec(suffix)
    if s is not None and not s.layered:
        return suffix
    if suffix.startswith("blocks."):
        return suffix
    if layer is None:
        raise HookNameError(f"{name!r} is a per-layer activation; pass a layer: "
                            f"get_act_name({name!r}, layer)")
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise HookNameError(f"layer must be an int, got {layer!r}")
    return f"blocks.{layer}.{suffix}"
