"""Feature visualisation for text models: soft prompts, and a gradient-guided token search.

Text is discrete, so gradient ascent cannot move a token a little. Two ways round it:

1. **Soft embeddings.** Optimise the input embeddings ``e [pos, d_model]`` directly (the
   transformer's ``hook_embed`` is patched with ``e``; position embeddings still add),
   keeping each row near the typical token-embedding norm ``r``::

       e <- e + adam( grad_e [ z(e) - w_norm * mean_p (|e_p| / r - 1)^2 ] )

   then *project* every row to its nearest token (cosine similarity with ``W_E``). The
   soft optimum is an upper bound the real vocabulary rarely reaches.
2. **Discrete search guided by gradients** (HotFlip, Ebrahimi et al. 2018; AutoPrompt,
   Shin et al. 2020; GCG, Zou et al. 2023). At the current tokens ``t``, the first-order
   gain of writing token ``v`` at position ``p`` is ``(W_E[v] - W_E[t_p]) . dz/de_p``.
   Each step takes the ``top_k`` tokens per position by that estimate, evaluates
   ``n_candidates`` random single swaps among them in one batched forward pass, and keeps
   the best if it beats the current sequence. The result is a real token sequence and its
   exact activation.

Both run for every target of the objective at once (``vmap`` over targets; each is a
``lax.scan`` over steps), one compiled program each. Compare ``activation`` with the top
dataset example's (:func:`~jaxinterp.features.examples.dataset_examples` with
``per_position=True``): the search starts from the projected soft prompt and only ever
improves on it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.errors import ConfigError
from jaxinterp.features.objectives import Objective, check_objective
from jaxinterp.hooks import patch, run_with_hooks
from jaxinterp.models.transformer import HookedTransformer
from jaxinterp.named import NamedArray


@dataclasses.dataclass(frozen=True)
class TextVisualization:
    """Per target: ``soft_activation`` (soft embeddings), ``projected_tokens [target, pos]``
    and ``projected_activation`` (nearest tokens), ``tokens`` and ``activation`` (after the
    discrete search); ``history_soft [target, steps]`` and ``history_search [target, steps]``
    (the pre-activation being climbed)."""

    soft_activation: np.ndarray
    projected_tokens: np.ndarray
    projected_activation: np.ndarray
    tokens: np.ndarray
    activation: NamedArray
    history_soft: np.ndarray
    history_search: np.ndarray


def _stop(hook: str, n_layers: int) -> dict:
    parts = hook.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and int(parts[1]) < n_layers:
        return {"stop_at_layer": int(parts[1]) + 1}
    return {}


def visualize_text(model: HookedTransformer, objective: Objective, *, seq_len: int = 8, steps: int = 200,
                   lr: float = 0.05, norm_weight: float = 1.0, search_steps: int = 64, n_candidates: int = 64,
                   top_k: int = 32, seed: int = 0) -> TextVisualization:
    """Soft-prompt optimisation, projection to tokens, then a gradient-guided token search.

    ``objective`` targets a hook of ``model`` with positions (``neuron(hook, i, position=-1)``
    reads the last of ``seq_len`` tokens; a channel-style objective averages over them).
    """
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"visualize_text needs a HookedTransformer, got {type(model).__name__}")
    if not isinstance(objective, Objective):
        raise ConfigError(f"visualize_text needs an Objective, got {type(objective).__name__}")
    cfg = model.cfg
    if not 1 <= seq_len <= cfg.n_ctx or min(steps, search_steps, n_candidates, top_k) < 1 or top_k > cfg.d_vocab:
        raise ConfigError(f"need 1 <= seq_len <= n_ctx={cfg.n_ctx}, steps, search_steps, n_candidates >= 1 "
                          f"and 1 <= top_k <= d_vocab; got seq_len={seq_len}, top_k={top_k}")
    kwargs = _stop(objective.hook, cfg.n_layers)
    hook = objective.hook
    W_E = model.W_E
    radius = jnp.mean(jnp.linalg.norm(W_E, axis=-1))
    unit_vocab = W_E / (jnp.linalg.norm(W_E, axis=-1, keepdims=True) + 1e-8)

    def act_of_embeds(embeds):  # [b, pos, d] -> activation at the hook
        tokens = jnp.zeros(embeds.shape[:2], jnp.int32)
        _, cache = run_with_hooks(model, tokens, interventions=[patch("hook_embed", embeds)], names=[hook], **kwargs)
        return cache[hook]

    def act_of_tokens(tokens):
        return act_of_embeds(W_E[tokens])

    act_shape = jax.eval_shape(act_of_tokens, jax.ShapeDtypeStruct((1, seq_len), jnp.int32)).shape
    objective = check_objective(objective, tuple(act_shape))
    optimizer = optax.adam(lr)

    def soft_loss(e, obj):
        z = obj.surrogate(act_of_embeds(e[None]))[0]
        norm_pen = jnp.mean((jnp.linalg.norm(e, axis=-1) / radius - 1.0) ** 2)
        return -(z - norm_weight * norm_pen), z

    def one(obj, key):
        k_init, k_search = jax.random.split(key)
        e = W_E[jax.random.randint(k_init, (seq_len,), 0, cfg.d_vocab)]

        def soft_step(carry, _):
            e, state = carry
            (_, z), g = jax.value_and_grad(soft_loss, has_aux=True)(e, obj)
            updates, state = optimizer.update(g, state, e)
            return (optax.apply_updates(e, updates), state), z

        (e, _), hist_soft = jax.lax.scan(soft_step, (e, optimizer.init(e)), None, length=steps)
        soft_value = obj.value(act_of_embeds(e[None]))[0]
        unit_e = e / (jnp.linalg.norm(e, axis=-1, keepdims=True) + 1e-8)
        projected = jnp.argmax(unit_e @ unit_vocab.T, axis=-1).astype(jnp.int32)
        projected_value = obj.value(act_of_tokens(projected[None]))[0]

        def search_step(carry, k):
            tokens, best = carry
            g = jax.grad(lambda x: obj.surrogate(act_of_embeds(x[None]))[0])(W_E[tokens])  # [pos, d]
            gain = g @ W_E.T  # [pos, vocab]; the current token's own gain is a constant per row
            cand = jax.lax.top_k(gain, top_k)[1]  # [pos, top_k]
            k_pos, k_tok = jax.random.split(k)
            pos = jax.random.randint(k_pos, (n_candidates,), 0, seq_len)
            choice = jax.random.randint(k_tok, (n_candidates,), 0, top_k)
            trial = jnp.tile(tokens, (n_candidates, 1)).at[jnp.arange(n_candidates), pos].set(cand[pos, choice])
            scores = obj.surrogate(act_of_tokens(trial))
            i = jnp.argmax(scores)
            better = scores[i] > best
            return (jnp.where(better, trial[i], tokens), jnp.where(better, scores[i], best)), best

        start = obj.surrogate(act_of_tokens(projected[None]))[0]
        (tokens, _), hist_search = jax.lax.scan(search_step, (projected, start),
                                                jax.random.split(k_search, search_steps))
        value = obj.value(act_of_tokens(tokens[None]))[0]
        return soft_value, projected, projected_value, tokens, value, hist_soft, hist_search

    keys = jax.random.split(jax.random.key(seed), objective.n_targets)
    out = jax.device_get(jax.jit(jax.vmap(one))(objective, keys))
    soft, proj_t, proj_v, tokens, value, h_soft, h_search = (np.asarray(x) for x in out)
    return TextVisualization(soft, proj_t, proj_v, tokens,
                             NamedArray(jnp.asarray(value), ("target",), attrs={"hook": hook}), h_soft, h_search)
