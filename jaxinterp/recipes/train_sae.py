"""``jaxinterp train-sae`` and ``jaxinterp eval-sae``: an SAE on any loadable model's site.

    jaxinterp train-sae --model runs/demo/lm/model --site blocks.0.hook_resid_post \\
        --architecture topk --d-sae 4096 --k 32 --steps 2000 --mesh data=4,model=2

Models: a folder saved by ``jaxinterp train`` (``config.json`` + ``model.safetensors`` +
``tokenizer.json``), a Hugging Face checkpoint folder (``hf:PATH``), or a GGUF file.
Tokens: the embedded corpus through the model's tokenizer (``default``), a token file
(``.npy``/``.bin``) or text files. Writes ``runs/<name>/``: the training log and
checkpoints (``train/``), the SAE in SAELens format (``sae/``) and held-out metrics
(``metrics.json``, ``density.png``).

Multi-host (TPU pod slices, GPU clusters): run the same command on every host with
``--coordinator HOST:PORT --num-processes N --process-id I`` (or ``--coordinator auto``
where JAX finds the cluster itself, as on TPU pods); the mesh spans every host's devices,
each host feeds only its devices' rows, and every host writes its shards of the
checkpoints into the same run folder (a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.errors import ConfigError, DataError
from jaxinterp.recipes import check_config, flag
from jaxinterp.train.runlog import write_json_atomic


@dataclasses.dataclass(frozen=True)
class TrainSAERecipe:
    """Train an SAE on a model's activations. Every field is a flag."""

    model: str = flag("", "saved model folder, hf:FOLDER (Hugging Face), or a .gguf file")
    site: str = flag("blocks.0.hook_resid_post", "hook name to read (and write, for eval)")
    architecture: str = flag("topk", "standard/relu, topk, batchtopk, matryoshka_batchtopk, jumprelu, gated")
    d_sae: int = flag(0, "dictionary size (0: expansion * d_in)")
    expansion: int = flag(8, "d_sae as a multiple of the site's width, when d_sae is 0")
    k: int = flag(32, "active latents per token (TopK family)")
    l1_coefficient: float = flag(5.0, "L1 coefficient (standard, gated)")
    l0_coefficient: float = flag(0.05, "L0 coefficient (jumprelu)")
    tokens: str = flag("default", "default (embedded corpus), a .npy/.bin token file, or .txt files")
    seq_len: int = flag(128, "tokens per sequence fed to the model")
    steps: int = flag(2000, "SAE optimiser steps")
    batch_size: int = flag(4096, "activations per step")
    lr: float = flag(3e-4, "Adam learning rate")
    buffer_tokens: int = flag(1 << 18, "activation store's shuffling buffer (rows)")
    cache_dir: str = flag("", "folder for cached activation shards (reused by later runs)")
    mesh: str = flag("", "device mesh, e.g. data=8 or data=4,model=2 (empty: one device)")
    coordinator: str = flag("", "multi-host: coordinator HOST:PORT for jax.distributed ('auto' on "
                            "TPU pods and SLURM/Kubernetes GPU clusters, which JAX detects itself)")
    num_processes: int = flag(1, "multi-host: number of processes (hosts)")
    process_id: int = flag(0, "multi-host: this process's index")
    eval_tokens: int = flag(65536, "held-out tokens for the final metrics")
    checkpoint_every: int = flag(500, "checkpoint interval (steps)")
    name: str = flag("sae", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed of the SAE and the data order")
    progress: bool = flag(True, "progress bar")

    def __post_init__(self) -> None:
        from jaxinterp.recipes.monosemanticity import check_sae_flags

        check_config(self, positive=("expansion", "k", "seq_len", "steps", "batch_size", "buffer_tokens",
                                     "num_processes", "eval_tokens"),
                     non_negative=("d_sae", "process_id", "checkpoint_every"))
        check_sae_flags(self.architecture, self.lr, self.l1_coefficient, self.l0_coefficient, "lr")
        if self.batch_size > self.buffer_tokens:
            raise ConfigError(f"--buffer-tokens ({self.buffer_tokens}) must hold at least one "
                              f"--batch-size ({self.batch_size})")
        if self.process_id >= self.num_processes:
            raise ConfigError(f"--process-id ({self.process_id}) must be below --num-processes "
                              f"({self.num_processes})")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


@dataclasses.dataclass(frozen=True)
class EvalSAERecipe:
    """Evaluate an SAE file on a model: reconstruction, density, CE loss recovered."""

    sae: str = flag("", "SAELens folder, Gemma Scope params.npz, or sparsify folder")
    model: str = flag("", "saved model folder, hf:FOLDER, or a .gguf file")
    site: str = flag("", "hook name (default: the SAE's own hook_name)")
    tokens: str = flag("default", "default (embedded corpus), a token file, or .txt files")
    seq_len: int = flag(128, "tokens per sequence")
    eval_tokens: int = flag(65536, "tokens to evaluate on (from the end of the token stream)")
    name: str = flag("eval-sae", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")

    def __post_init__(self) -> None:
        check_config(self, positive=("seq_len", "eval_tokens"))
        if not self.sae:
            raise ConfigError("--sae is required: a SAELens folder, a Gemma Scope params.npz, or a sparsify folder.")
        if not Path(self.sae).exists():
            raise ConfigError(f"--sae {self.sae}: no such file or folder.")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def load_model_and_tokenizer(spec: str) -> tuple[Any, Any]:
    """A model from a saved folder, ``hf:FOLDER`` or a ``.gguf`` file, with its tokenizer."""
    if not spec:
        raise ConfigError("--model is required: a saved model folder, hf:FOLDER, or a .gguf file.")
    if spec.startswith("hf:"):
        from jaxinterp.io.hf import load_hf

        return load_hf(spec[3:])
    if spec.endswith(".gguf"):
        from jaxinterp.io.gguf import load_gguf

        return load_gguf(spec)
    from jaxinterp.data import load_tokenizer
    from jaxinterp.recipes.lm import load_model

    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a saved model folder (no config.json); use hf:FOLDER "
                          "for a Hugging Face checkpoint or a .gguf file.")
    model = load_model(folder)
    if (folder / "tokenizer.json").is_file():
        return model, load_tokenizer(folder)
    from jaxinterp.data import ByteTokenizer  # a model trained with --tokenizer bytes

    if model.cfg.d_vocab != 256:
        raise ConfigError(f"{folder} has no tokenizer.json and d_vocab={model.cfg.d_vocab} is not "
                          "the byte tokenizer's 256.")
    return model, ByteTokenizer()


def token_stream(spec: str, tokenizer: Any) -> np.ndarray:
    from jaxinterp.data import load_corpus, load_tokens, tokenize_corpus

    if spec == "default":
        return tokenize_corpus(load_corpus("default"), tokenizer)
    paths = [p for p in spec.split(",") if p]
    if len(paths) == 1 and Path(paths[0]).suffix in (".npy", ".bin"):
        return load_tokens(paths[0])
    from jaxinterp.data import load_text_files

    return tokenize_corpus(load_text_files(paths), tokenizer)


def _held_out(stream: np.ndarray, seq_len: int, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    n_windows = max(n_tokens // seq_len, 1)
    if len(stream) < (n_windows + 1) * seq_len:
        raise DataError(f"The token stream ({len(stream)} tokens) is too short for {n_windows} "
                        f"held-out windows of {seq_len} plus training data.")
    cut = len(stream) - n_windows * seq_len
    return stream[:cut], np.asarray(stream[cut:], np.int32).reshape(n_windows, seq_len)


def run_train_sae(c: TrainSAERecipe) -> dict:
    """Trains, saves (SAELens format) and evaluates one SAE; returns the metrics."""
    import jax

    from jaxinterp.data import TokenWindows
    from jaxinterp.sae import SAEConfig
    from jaxinterp.sae.formats import save_saelens
    from jaxinterp.sae.store import ActivationStore
    from jaxinterp.sae.trainer import TrainSAEConfig, train_sae

    if c.coordinator == "auto":
        jax.distributed.initialize()
    elif c.coordinator:
        # CPU devices talk across processes through gloo (GPUs/TPUs ignore this setting)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(c.coordinator, num_processes=c.num_processes, process_id=c.process_id)
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(c.model)
    train_tokens, held_out = _held_out(token_stream(c.tokens, tokenizer), c.seq_len, c.eval_tokens)
    windows = TokenWindows(train_tokens, c.seq_len, 8, seed=c.seed + 1)
    store = ActivationStore(model, windows, c.site, batch_size=c.batch_size, buffer_tokens=c.buffer_tokens,
                            seed=c.seed, cache_dir=c.cache_dir or None)
    d_in = store.sites[c.site]
    cfg = SAEConfig(d_in=d_in, d_sae=c.d_sae or c.expansion * d_in, architecture=c.architecture,
                    k=c.k, l1_coefficient=c.l1_coefficient, l0_coefficient=c.l0_coefficient,
                    hook_name=c.site, normalize_activations="expected_average_only_in")
    resample = tuple(int(c.steps * f) for f in (0.25, 0.5, 0.75)) if cfg.architecture in ("standard", "gated") else ()
    result = train_sae(cfg, store, TrainSAEConfig(
        steps=c.steps, batch_size=c.batch_size, lr=c.lr, lr_warmup_steps=min(1000, c.steps // 10),
        lr_decay_steps=c.steps // 5, sparsity_warmup_steps=c.steps // 20, resample_steps=resample,
        mesh=c.mesh, seed=c.seed, name=f"{c.name}/train", runs_dir=c.runs_dir,
        checkpoint_every=c.checkpoint_every, log_every=max(c.steps // 100, 1), progress=c.progress))
    sae = result.sae
    if jax.process_index() == 0:
        save_saelens(jax.device_get(sae), c.run_dir / "sae", model_name=c.model)
    metrics = _evaluate(model, sae, held_out, c.site, c.run_dir)
    metrics.update(train_seconds=round(result.seconds, 1), total_seconds=round(time.perf_counter() - start, 1),
                   activation_tokens_per_s=round(store.tokens_per_second()), d_sae=cfg.d_sae)
    write_json_atomic(c.run_dir / "metrics.json", metrics)
    return metrics


def run_eval_sae(c: EvalSAERecipe) -> dict:
    """Loads an SAE file (format detected) and evaluates it on the model."""
    import dataclasses as dc

    from jaxinterp.sae.formats import load_gemma_scope, load_saelens, load_sparsify

    path = Path(c.sae)
    if path.suffix == ".npz" or (path / "params.npz").is_file():
        sae = load_gemma_scope(path, hook_name=c.site)
    elif (path / "sae.safetensors").is_file():
        sae = load_sparsify(path, hook_name=c.site)
    else:
        sae = load_saelens(path)
    site = c.site or sae.cfg.hook_name
    if not site:
        raise ConfigError("The SAE file names no hook; pass --site.")
    sae = dc.replace(sae, cfg=dc.replace(sae.cfg, hook_name=site)) if site != sae.cfg.hook_name else sae
    model, tokenizer = load_model_and_tokenizer(c.model)
    _, held_out = _held_out(token_stream(c.tokens, tokenizer), c.seq_len, c.eval_tokens)
    metrics = _evaluate(model, sae, held_out, site, c.run_dir)
    write_json_atomic(c.run_dir / "metrics.json", metrics)
    return metrics


def _evaluate(model, sae, windows: np.ndarray, site: str, out: Path) -> dict:
    from jaxinterp.sae.metrics import density_histogram_png, evaluate_sae, spliced_loss
    from jaxinterp.sae.store import site_activations

    acts = site_activations(model, windows, site)[site]
    stats = evaluate_sae(sae, np.array_split(acts, max(len(acts) // 4096, 1)))
    density = stats.pop("density")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "density.npy", density)
    density_histogram_png(density, out / "density.png", title=site)
    spliced = spliced_loss(model, np.array_split(windows, max(len(windows) // 8, 1)), sae)
    return {"site": site, **stats, **spliced}
