"""Small report pieces for training runs: loss curves, attention grids, sample text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.viz._figure import figure, save


def loss_curve_png(train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]],
                   path: str | Path, title: str = "loss") -> Path:
    """Train (and eval) loss against step, saved as a PNG."""
    path = Path(path)
    fig = figure((6, 3.5))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), label="train")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def attention_png(patterns: np.ndarray, labels: Sequence[str], path: str | Path,
                  layers: Sequence[int] | None = None) -> Path:
    """Every head's attention pattern ``[layer, head, q, k]`` with token labels."""
    from jaxinterp.viz.attention import attention_patterns

    return attention_patterns(patterns, labels, path, layers=layers,
                              title="attention patterns (query rows, key columns)")


def sample_text(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40,
                temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Continues each prompt with the model (greedy by default) and decodes the result."""
    from jaxinterp.models.generation import generate

    out = []
    for prompt in prompts:
        n_ctx = model.cfg.n_ctx
        ids = tokenizer.encode(prompt)[-max(n_ctx - max_new_tokens, n_ctx // 2):]
        tokens = generate(model, jnp.asarray([ids]), min(max_new_tokens, n_ctx - len(ids)),
                          temperature=temperature,
                          key=jax.random.key(seed))
        out.append(tokenizer.decode([int(t) for t in tokens[0]]))
    return out
