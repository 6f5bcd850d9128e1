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
                  max_heads: int = 8) -> Path:
    """A grid of attention patterns ``[layer, head, q, k]`` with token labels."""
    path = Path(path)
    n_layers, n_heads = patterns.shape[:2]
    n_heads = min(n_heads, max_heads)
    fig = figure((2.2 * n_heads, 2.2 * n_layers + 0.4), dpi=110)
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    ticks = [repr(t)[1:-1][:8] for t in labels]
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            ax.imshow(patterns[layer, head], cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"L{layer}H{head}", fontsize=8)
            show = len(ticks) <= 24
            ax.set_xticks(range(len(ticks)) if show else [])
            ax.set_yticks(range(len(ticks)) if show else [])
            if show:
                ax.set_xticklabels(ticks, rotation=90, fontsize=4)
                ax.set_yticklabels(ticks, fontsize=4)
    fig.suptitle("attention patterns (query rows, key columns)", fontsize=9)
    return save(fig, path)


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
