"""A Mathematical Framework for Transformer Circuits, on attention-only models of 0, 1 and 2 layers.

Elhage et al. (2021) read small attention-only transformers off their weights:

* **0 layers**: the model is ``softmax(W_E W_U)``, a table of bigram statistics. We compare
  its direct path with the corpus's own bigram table: held-out loss, and the KL divergence
  between the two next-token distributions of the frequent tokens.
* **1 layer**: bigrams plus *skip-trigrams* ``A ... B -> C`` from each head's QK and OV
  circuits (:func:`jaxinterp.circuits.skip_trigrams`). We list the strongest and check each
  on the model: putting ``A`` earlier in a prompt ending in ``B`` should raise ``C``'s logit.
* **2 layers**: composition. A previous-token head in layer 0 writes the previous token
  into the residual stream; an induction head in layer 1 reads it through its keys, so the
  pair has a high K-composition score (:func:`jaxinterp.circuits.composition_scores`).

Writes ``runs/<name>/``: ``config.json``, ``results.json``, ``report.md``,
``bigram_vs_direct.png``, ``skip_trigrams.md`` (in the report), ``composition.png``,
``attention.html`` (the 2-layer model on a repeated sentence).

    jaxinterp experiment framework           # 31 min measured on 2 shared cores (load 10-18)
    jaxinterp experiment framework --fast    # a minute: tiny models, effects asserted loosely
"""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import circuits
from jaxinterp.data import repeated_tokens
from jaxinterp.hooks import run_with_cache
from jaxinterp.models import HookedTransformer, unembed
from jaxinterp.named import NamedArray
from jaxinterp.recipes import check_config, flag, is_fast
from jaxinterp.recipes._attn_only import (
    AttnOnlyRunConfig,
    AttnOnlySpec,
    corpus_data,
    train_attn_only,
)
from jaxinterp.recipes._run_files import md_table, write_run
from jaxinterp.viz import attention_html, heatmap, heatmaps


@dataclasses.dataclass(frozen=True)
class FrameworkConfig(AttnOnlyRunConfig):
    """The framework run; step counts of 0 mean the defaults (smaller with ``--fast``)."""

    name: str = flag("framework", "run folder under runs_dir")
    steps_0: int = flag(0, "steps of the 0-layer model (0: 300; fast 40)")
    steps_1: int = flag(0, "steps of the 1-layer model (0: 600; fast 60)")
    steps_2: int = flag(0, "steps of the 2-layer model (0: 4000; fast 30)")
    repeat_fraction: float = flag(0.5, "fraction of the 2-layer model's windows whose beginning repeats right after it")
    top_tokens: int = flag(300, "most frequent tokens used for bigram and skip-trigram tables")

    def __post_init__(self):
        check_config(self, positive=("vocab_size", "d_model", "n_heads", "seq_len", "batch_size", "top_tokens"), non_negative=("steps_0", "steps_1", "steps_2"))


def _sizes(config: FrameworkConfig) -> FrameworkConfig:
    fast = is_fast(config)
    pick = {"steps_0": (300, 40), "steps_1": (600, 60), "steps_2": (4000, 30)}
    return dataclasses.replace(config, fast=fast, **{k: getattr(config, k) or v[fast] for k, v in pick.items()})


# 0 layers: the direct path against the corpus bigram table -------------------------------


def bigram_log_probs(tokens: np.ndarray, d_vocab: int, alpha: float = 0.1) -> np.ndarray:
    """``log P(next | current)`` from counts with add-``alpha`` smoothing: ``[d_vocab, d_vocab]``."""
    counts = np.bincount(tokens[:-1].astype(np.int64) * d_vocab + tokens[1:], minlength=d_vocab * d_vocab)
    counts = counts.reshape(d_vocab, d_vocab).astype(np.float64) + alpha
    return np.log(counts / counts.sum(1, keepdims=True))


def direct_path_log_probs(model: HookedTransformer) -> np.ndarray:
    """The 0-layer model's ``log P(next | current)`` for every token at the mean position."""
    tokens = jnp.arange(model.cfg.d_vocab)[None]
    x = model.W_E[tokens[0]][None] + (0 if model.W_pos is None else model.W_pos.mean(0))
    return np.asarray(jax.nn.log_softmax(unembed(model, x)[0].astype(jnp.float32), -1), np.float64)


def _mean_loss(log_probs: np.ndarray, tokens: np.ndarray) -> float:
    return float(-log_probs[tokens[:-1], tokens[1:]].mean())


def zero_layer(model, data, top: np.ndarray, out: Path) -> dict:
    bigram = bigram_log_probs(data.train, data.d_vocab)
    direct = direct_path_log_probs(model)
    unigram = np.log(np.bincount(data.train, minlength=data.d_vocab) + 0.1)
    unigram = np.broadcast_to(unigram - np.log(np.exp(unigram).sum()), bigram.shape)
    p_bigram = np.exp(bigram[top])
    kl = {name: float((p_bigram * (bigram[top] - lp[top])).sum(1).mean())
          for name, lp in (("direct_path", direct), ("unigram", unigram))}
    show = top[:24]
    labels = [repr(data.tokenizer.decode([int(t)]))[1:-1][:8] for t in show]
    axes = ("current token", "next token")
    heatmaps({"corpus bigram log P(next | current)": NamedArray(_centre(bigram[np.ix_(show, show)]), axes),
              "0-layer model: direct path W_E W_U": NamedArray(_centre(direct[np.ix_(show, show)]), axes)},
             out / "bigram_vs_direct.png", xlabels=labels, ylabels=labels, shared_scale=False,
             colorbar_label="log-probability - row mean (nats)",
             suptitle="log-probabilities among the 24 most frequent tokens (each row minus its mean; "
                      "colour scales differ)")
    corr = float(np.corrcoef(bigram[top].ravel(), direct[top].ravel())[0, 1])
    return {"val_loss_direct_path": _mean_loss(direct, data.val), "val_loss_bigram_table": _mean_loss(bigram, data.val),
            "val_loss_unigram": _mean_loss(unigram, data.val), "kl_bigram_to_direct_path": kl["direct_path"],
            "kl_bigram_to_unigram": kl["unigram"], "log_prob_correlation": corr}


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(1, keepdims=True)


# 1 layer: skip-trigrams ------------------------------------------------------------------


def check_skip_trigram(model: HookedTransformer, trigram, filler: np.ndarray, key, n: int = 32,
                       length: int = 16) -> float:
    """Mean rise of ``logit(C)`` at a final ``B`` when an earlier filler token is replaced by ``A``."""
    rows = jax.random.choice(key, jnp.asarray(filler), (n, length))
    base = rows.at[:, -1].set(trigram.destination)
    with_a = base.at[:, length // 2].set(trigram.source)
    logits = model(jnp.concatenate([base, with_a]))[:, -1, trigram.output]
    return float((logits[n:] - logits[:n]).mean())


def one_layer(model, data, top: np.ndarray, key, k: int) -> tuple[list[dict], list[str]]:
    found = circuits.skip_trigrams(model, top, k=k)
    decode = data.tokenizer.decode
    rows, table = [], []
    for i, t in enumerate(found):
        effect = check_skip_trigram(model, t, top, jax.random.fold_in(key, i))
        text = [decode([x]) for x in (t.source, t.destination, t.output)]
        rows.append({**dataclasses.asdict(t), "text": text, "logit_rise_on_model": effect})
        table.append([f"L0H{t.head}", *(f"`{x!r}`" for x in text), t.ov, t.qk, effect])
    lines = md_table(["head", "A (source)", "B (destination)", "C (output)", "OV logit", "QK score",
                      "measured logit rise"], table)
    return rows, lines


# 2 layers: K-composition of a previous-token head and an induction head ------------------


def plot_composition(comp: np.ndarray, p_head: int, i_head: int, path: Path) -> Path:
    """The K-composition of every layer-0 head into every layer-1 head's keys."""
    return heatmap(NamedArray(comp, ("layer-0 head (writes)", "layer-1 head (its keys read)")), path,
                   title=f"K-composition (previous-token head L0H{p_head},\ninduction head L1H{i_head})",
                   cmap="Blues", xlabels=[f"L1H{h}" for h in range(comp.shape[1])],
                   ylabels=[f"L0H{h}" for h in range(comp.shape[0])], colorbar_label="composition score")


def two_layer(model, key, out: Path, tokenizer) -> dict:
    rep = repeated_tokens(key, 32, min(40, (model.cfg.n_ctx - 1) // 2), model.cfg.d_vocab, bos=0)
    scores = circuits.head_scores(model, rep, detectors=("previous_token", "induction"))
    prev, ind = np.asarray(scores.values[0]), np.asarray(scores.values[1])
    p_head = int(np.argmax(prev[0]))
    i_head = int(np.argmax(ind[1]))
    comp = np.asarray(circuits.composition_scores(model, "K").values[0, :, 1, :])  # [L0 head, L1 head]
    others = np.delete(comp.ravel(), p_head * comp.shape[1] + i_head)
    baseline = circuits.composition_scores(_shuffled(model, key), "K").values[0, :, 1, :]
    plot_composition(comp, p_head, i_head, out / "composition.png")
    text = "The cat sat on the mat because it was tired. The cat sat on the mat because it was tired."
    ids = jnp.asarray([tokenizer.encode(text)[: model.cfg.n_ctx]])
    _, cache = run_with_cache(model, ids, names="blocks.*.attn.hook_pattern")
    labels = [tokenizer.decode([int(t)]) for t in ids[0]]
    attention_html(cache.stacked("blocks.*.attn.hook_pattern")[:, 0], labels,
                   title="2-layer attention-only model on a repeated sentence").save(out / "attention.html")
    return {"previous_token_scores": prev, "induction_scores": ind, "previous_token_head": [0, p_head],
            "induction_head": [1, i_head], "k_composition": comp,
            "k_composition_prev_to_induction": float(comp[p_head, i_head]),
            "k_composition_other_pairs_mean": float(others.mean()),
            "k_composition_shuffled_weights_mean": float(np.mean(baseline))}


def _shuffled(model: HookedTransformer, key) -> HookedTransformer:
    """The model with the residual-stream directions the heads write to (``W_O``'s columns)
    shuffled: the composition scores of heads of the same sizes that do not talk to each
    other, a chance baseline."""
    perm = jax.random.permutation(key, model.cfg.d_model)
    return eqx.tree_at(lambda m: m.blocks.attn.W_O, model, model.blocks.attn.W_O[..., perm])


def run_framework(config: FrameworkConfig) -> dict:
    config = _sizes(config)
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = corpus_data(config.vocab_size)
    top = np.argsort(-np.bincount(data.train, minlength=data.d_vocab))[: config.top_tokens]
    models, seconds = {}, {}
    for n_layers, steps in ((0, config.steps_0), (1, config.steps_1), (2, config.steps_2)):
        spec = AttnOnlySpec(n_layers, config.d_model, config.n_heads, config.seq_len, config.batch_size, steps,
                            config.lr, config.seed, config.repeat_fraction if n_layers == 2 else 0.0)
        t = time.perf_counter()
        models[n_layers], log = train_attn_only(spec, data, out, f"train_{n_layers}_layer")
        seconds[f"train_{n_layers}_layer"] = time.perf_counter() - t
    key = jax.random.key(config.seed)
    results: dict = {"zero_layer": zero_layer(models[0], data, top, out)}
    trigrams, table = one_layer(models[1], data, top, key, k=5 if config.fast else 8)
    results["one_layer"] = {"skip_trigrams": trigrams,
                            "ov_copying_eigenvalue_score": circuits.ov_copying_scores(models[1]).values,
                            "mean_logit_rise": float(np.mean([t["logit_rise_on_model"] for t in trigrams])),
                            "fraction_confirmed": float(np.mean([t["logit_rise_on_model"] > 0 for t in trigrams]))}
    results["two_layer"] = two_layer(models[2], jax.random.fold_in(key, 1), out, data.tokenizer)
    results["seconds"] = {**seconds, "total": time.perf_counter() - start}
    z, o, t2 = results["zero_layer"], results["one_layer"], results["two_layer"]
    report = [
        f"# {config.name}: A Mathematical Framework for Transformer Circuits", "",
        f"Attention-only models (d_model {config.d_model}, {config.n_heads} heads) on the embedded corpus "
        f"(BPE vocabulary {data.d_vocab}); wall time {results['seconds']['total']:.0f} s.", "",
        "## 0 layers: the direct path is the bigram table", "",
        *md_table(["held-out loss (nats/token)", "value"], [
            ["0-layer model (direct path)", z["val_loss_direct_path"]],
            ["corpus bigram table (add-0.1)", z["val_loss_bigram_table"]],
            ["unigram", z["val_loss_unigram"]]]), "",
        f"KL(bigram || direct path) over the {config.top_tokens} most frequent tokens: "
        f"{z['kl_bigram_to_direct_path']:.3f} nats (unigram instead of the model: {z['kl_bigram_to_unigram']:.3f}); "
        f"correlation of the log-probabilities {z['log_prob_correlation']:.3f}.", "",
        "![bigram vs direct path](bigram_vs_direct.png)", "",
        "## 1 layer: skip-trigrams from the QK and OV circuits", "",
        "Each row: attending from B back to A raises C. The last column puts A in the middle of a random "
        "prompt ending in B and measures the rise of C's logit on the model.", "", *table, "",
        f"{o['fraction_confirmed']:.0%} confirmed (logit rises), mean rise {o['mean_logit_rise']:.2f}.", "",
        "## 2 layers: K-composition", "",
        f"Previous-token head L0H{t2['previous_token_head'][1]} (score "
        f"{t2['previous_token_scores'][0][t2['previous_token_head'][1]]:.2f}); induction head "
        f"L1H{t2['induction_head'][1]} (prefix matching {t2['induction_scores'][1][t2['induction_head'][1]]:.2f}). "
        f"Their K-composition: {t2['k_composition_prev_to_induction']:.3f}, against "
        f"{t2['k_composition_other_pairs_mean']:.3f} for the other layer-0 -> layer-1 pairs and "
        f"{t2['k_composition_shuffled_weights_mean']:.3f} for shuffled weights.", "",
        "![K-composition](composition.png)", "",
        "[attention patterns on a repeated sentence](attention.html)",
    ]
    write_run(out, config, results, report)
    print(html.unescape(f"framework: direct-path KL {z['kl_bigram_to_direct_path']:.3f} (unigram "
                        f"{z['kl_bigram_to_unigram']:.3f}); skip-trigrams confirmed {o['fraction_confirmed']:.0%}; "
                        f"K-composition {t2['k_composition_prev_to_induction']:.3f} vs "
                        f"{t2['k_composition_other_pairs_mean']:.3f}"))
    return {"kl_direct_path": z["kl_bigram_to_direct_path"], "kl_unigram": z["kl_bigram_to_unigram"],
            "skip_trigrams_confirmed": o["fraction_confirmed"],
            "k_composition_prev_to_induction": t2["k_composition_prev_to_induction"],
            "k_composition_other_pairs": t2["k_composition_other_pairs_mean"], "seconds": results["seconds"]["total"]}


__all__ = ["FrameworkConfig", "bigram_log_probs", "direct_path_log_probs", "run_framework"]
