"""Steering a model with a feature: clamp or add it at its site, keeping the SAE's error term.

At the SAE's site every activation ``x`` is rewritten as its reconstruction with one latent
edited, plus what the SAE missed (:func:`jaxinterp.sae.splice` with ``keep_error``)::

    x  ->  decode(edit(encode(x))) + (x - sae(x))
    clamp:  f_i <- c                 the feature held at c on every token
    add:    f_i <- f_i + c           = adding c * W_dec[i] to x

so with ``c`` equal to the current activation nothing changes, and everything the SAE does
not explain is kept. Scaling Monosemanticity (Templeton et al. 2024) clamps features to a
multiple of their maximum activation (about 10x for the Golden Gate Bridge demo);
``multiple=`` does that with the max from a feature analysis. Any direction can be added
instead (:func:`direction_steering`, a plain ``ji.add``), which gives the control: a
random direction with the same norm as the feature's.

:func:`compare_steering` measures the effect on prompts: greedy continuations before and
after, and on the prompts' next-token distributions the mean ``KL(p_clean || p_steered)``
and the probability mass on a token set (the feature's top promoted tokens, from
:func:`~jaxinterp.features.logit_effects.logit_effects`) before and after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from jaxinterp.errors import ConfigError, IndexRangeError
from jaxinterp.hooks import Intervention, add, run_with_hooks
from jaxinterp.sae.splice import clamp, splice

MODES = ("clamp", "add")


def add_to_latent(acts: Array, params: dict) -> Array:
    """An ``edit_fn`` for :func:`~jaxinterp.sae.splice`: latent ``params["index"]`` += ``params["value"]``."""
    hit = jnp.arange(acts.shape[-1]) == jnp.asarray(params["index"])
    return acts + jnp.where(hit, jnp.asarray(params["value"], acts.dtype), jnp.zeros((), acts.dtype))


def check_feature(sae: Any, feature: int) -> int:
    """``feature`` as an index into the SAE's latents (negative counts from the end; out of range raises)."""
    d = sae.cfg.d_sae
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)):
        raise IndexRangeError(f"A feature index must be an int, got {type(feature).__name__}.")
    if not -d <= feature < d:
        raise IndexRangeError(f"feature {feature} is out of range for an SAE with d_sae={d} "
                              f"(valid {-d}..{d - 1}).")
    return int(feature) % d


def feature_steering(sae: Any, feature: int, *, value: float | None = None, multiple: float | None = None,
                     max_activation: float | None = None, mode: str = "clamp", site: str | None = None
                     ) -> list[Intervention]:
    """Interventions that clamp (or add to) ``feature`` at the SAE's site, error term kept.

    Args:
        sae: the SAE (or transcoder) whose latent is steered.
        feature: latent index.
        value: the clamp value (``mode="clamp"``) or the amount added (``mode="add"``).
        multiple: instead of ``value``: this multiple of ``max_activation``.
        max_activation: the feature's maximum activation (``analysis.max_activation[i]``).
        mode: ``"clamp"`` or ``"add"``.
        site: where the caller means to steer; must be the site the SAE was trained on.
    """
    i = check_feature(sae, feature)
    trained = sae.cfg.hook_name_out if sae.cfg.is_transcoder else sae.cfg.hook_name
    if site is not None and site not in (sae.cfg.hook_name, trained):
        raise ConfigError(f"Cannot steer at {site!r}: this SAE was trained on {sae.cfg.hook_name!r}"
                          + (f" (writing {trained!r})" if trained != sae.cfg.hook_name else "")
                          + "; its features mean nothing elsewhere.")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}.")
    if (value is None) == (multiple is None):
        raise ConfigError("Pass exactly one of value= or multiple= (with max_activation=).")
    if multiple is not None:
        if max_activation is None or not np.isfinite(max_activation) or max_activation <= 0:
            raise ConfigError(f"multiple= needs the feature's positive max_activation, got {max_activation!r} "
                              "(a dead feature cannot be steered by a multiple of its maximum).")
        value = float(multiple) * float(max_activation)
    edit = clamp if mode == "clamp" else add_to_latent
    return splice(sae, keep_error=True, edit_fn=edit,
                  edit_params={"index": jnp.asarray(i, jnp.int32), "value": jnp.asarray(value, jnp.float32)})


def direction_steering(site: str, vector: Array, scale: float = 1.0) -> list[Intervention]:
    """Adds ``scale * vector`` to the activation at ``site`` on every token (any direction)."""
    return [add(site, jnp.asarray(vector, jnp.float32), scale=scale)]


def feature_direction(sae: Any, feature: int) -> Array:
    """The direction ``W_dec[i]`` a feature writes at its site."""
    return jnp.asarray(sae.W_dec[check_feature(sae, feature)], jnp.float32)


@dataclasses.dataclass(frozen=True)
class SteeringResult:
    """Before/after on the same prompts (see the module docstring)."""

    before: list[str]            # greedy continuations, clean
    after: list[str]             # and steered
    kl: float                    # mean KL(p_clean || p_steered) over prompt positions
    kl_per_prompt: list[float]
    token_prob_before: float     # mean probability mass on the token set, clean
    token_prob_after: float      # and steered
    top_before: list[list[str]]  # most likely next tokens after each prompt, clean
    top_after: list[list[str]]

    @property
    def token_prob_ratio(self) -> float:
        return self.token_prob_after / max(self.token_prob_before, 1e-30)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "token_prob_ratio": self.token_prob_ratio}


@jax.jit
def _distributions(model: Any, tokens: Array, mask: Array, interventions: Any, token_set: Array) -> dict[str, Array]:
    clean = jax.nn.log_softmax(model(tokens, mask).astype(jnp.float32), -1)
    steered = jax.nn.log_softmax(run_with_hooks(model, tokens, mask, interventions=interventions).astype(jnp.float32), -1)
    kl = (jnp.exp(clean) * (clean - steered)).sum(-1)                       # [b, p]
    w = mask.astype(jnp.float32)
    mass = lambda lp: jnp.exp(lp[..., token_set]).sum(-1)  # noqa: E731
    return {"kl": (kl * w).sum(-1) / w.sum(-1), "before": (mass(clean) * w).sum(-1) / w.sum(-1),
            "after": (mass(steered) * w).sum(-1) / w.sum(-1), "last_clean": clean[:, -1], "last_steered": steered[:, -1]}


def compare_steering(model: Any, prompts: Sequence[str] | Array, interventions: Sequence[Intervention], *,
                     tokens_of_interest: Sequence[int] = (), max_new_tokens: int = 20, top: int = 5
                     ) -> SteeringResult:
    """Greedy continuations and next-token statistics of ``prompts``, clean and steered.

    ``prompts`` are strings (the model needs a tokenizer; a batch is left-padded) or a
    ``[batch, pos]`` token array. ``tokens_of_interest`` is the token set whose probability
    is compared (e.g. the feature's top promoted tokens).
    """
    from jaxinterp.models.generation import generate

    if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str):
        tokens, mask = _left_padded(model, list(prompts))
    else:
        tokens = jnp.asarray(prompts, jnp.int32)
        mask = jnp.ones_like(tokens)
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ConfigError("compare_steering needs at least one non-empty prompt.")
    token_set = jnp.asarray(list(tokens_of_interest) or [0], jnp.int32)
    stats = jax.device_get(_distributions(model, tokens, mask, tuple(interventions), token_set))
    n_new = max(0, min(max_new_tokens, model.cfg.n_ctx - tokens.shape[1]))
    clean = generate(model, tokens, n_new, attention_mask=mask)[:, tokens.shape[1]:]
    steered = generate(model, tokens, n_new, attention_mask=mask, interventions=interventions)[:, tokens.shape[1]:]
    text = (lambda ids: model.to_string(ids)) if getattr(model, "tokenizer", None) is not None else (
        lambda ids: " ".join(str(int(t)) for t in ids))

    def best(lp: np.ndarray) -> list[list[str]]:
        order = np.argsort(-lp, -1)[:, :top]
        return [[text(np.asarray([t])) for t in row] for row in order]

    has_set = bool(len(tokens_of_interest))
    return SteeringResult(
        before=[text(np.asarray(r)) for r in np.asarray(clean)], after=[text(np.asarray(r)) for r in np.asarray(steered)],
        kl=float(np.mean(stats["kl"])), kl_per_prompt=[float(v) for v in stats["kl"]],
        token_prob_before=float(np.mean(stats["before"])) if has_set else float("nan"),
        token_prob_after=float(np.mean(stats["after"])) if has_set else float("nan"),
        top_before=best(stats["last_clean"]), top_after=best(stats["last_steered"]))


def _left_padded(model: Any, prompts: list[str]) -> tuple[Array, Array]:
    if getattr(model, "tokenizer", None) is None:
        raise ConfigError("String prompts need a model with a tokenizer; pass token ids instead.")
    ids = [np.asarray(model.to_tokens(p))[0] for p in prompts]
    if any(len(i) == 0 for i in ids):
        raise ConfigError("Every prompt needs at least one token.")
    width = max(len(i) for i in ids)
    tokens = np.zeros((len(ids), width), np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for r, i in enumerate(ids):
        tokens[r, width - len(i):] = i
        mask[r, width - len(i):] = 1
    return jnp.asarray(tokens), jnp.asarray(mask)
