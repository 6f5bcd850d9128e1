"""Train the small conv net on an offline image set (rendered shapes, or sklearn's digits).

``train_conv(data, cfg, steps=...)`` runs the generic loop (:func:`jaxinterp.train.train`:
jitted step, checkpoints, exact resume, NaN guard) with adam on the cross-entropy of
:func:`jaxinterp.models.conv.classifier_loss`. Batches are a pure function of the step
(a permutation per epoch drawn from ``(seed, epoch)``), so a resumed run sees exactly the
batches an uninterrupted one would. ``image_data(name, ...)`` builds the train and test
sets: ``"shapes"`` (:func:`jaxinterp.data.images.shapes_dataset`, 23 classes of
orientation and shape) or ``"digits"`` (:func:`jaxinterp.data.images.load_digits`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.data.images import class_names, load_digits, shapes_dataset
from jaxinterp.errors import ConfigError
from jaxinterp.io.weights import load_weights, save_weights
from jaxinterp.models.conv import ConvConfig, ConvNet, classifier_loss, init_conv
from jaxinterp.train import TrainConfig, train


def image_data(name: str, n_train: int, n_test: int, *, size: int = 32, seed: int = 0) -> dict:
    """``{"train": {images, labels}, "test": {...}, "classes": [...]}`` for ``shapes`` or ``digits``."""
    if name == "shapes":
        train_set = shapes_dataset(n_train, size=size, seed=seed)
        test_set = shapes_dataset(n_test, size=size, seed=seed + 10_000)
        return {"train": train_set, "test": test_set, "classes": class_names()}
    if name == "digits":
        d = load_digits(size=size)
        order = np.random.default_rng(seed).permutation(len(d["labels"]))
        n_test = min(n_test, len(order) // 4)
        test, rest = order[:n_test], order[n_test:]
        rest = rest[:n_train] if n_train else rest
        pick = lambda idx: {k: v[idx] for k, v in d.items()}  # noqa: E731
        return {"train": pick(rest), "test": pick(test), "classes": [str(i) for i in range(10)]}
    raise ConfigError(f"unknown image dataset {name!r}; expected 'shapes' or 'digits'")


def train_conv(data: dict, cfg: ConvConfig, *, steps: int, batch_size: int = 128, lr: float = 3e-3,
               seed: int = 0, name: str = "conv", runs_dir: str = "runs", checkpoint_every: int = 0,
               progress: bool = True) -> tuple[ConvNet, dict]:
    """Trains a :class:`ConvNet`; returns it and ``{"test_accuracy", "test_loss", "final_loss"}``."""
    images, labels = data["train"]["images"], data["train"]["labels"]
    n = len(labels)
    if n < batch_size:
        raise ConfigError(f"the training set has {n} images, fewer than batch_size={batch_size}")
    per_epoch = n // batch_size

    def batch_fn(step: int):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng((seed, epoch)).permutation(n)[i * batch_size:(i + 1) * batch_size]
        return jnp.asarray(images[order]), jnp.asarray(labels[order])

    def loss_fn(model, batch, key):
        return classifier_loss(model, *batch)

    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10 + 1), max(steps, 2))
    result = train(loss_fn, init_conv(cfg, jax.random.key(seed)), optax.adam(schedule), batch_fn,
                   TrainConfig(steps=steps, seed=seed, log_every=max(1, min(50, steps)), name=name,
                               runs_dir=runs_dir, checkpoint_every=checkpoint_every, progress=progress),
                   state_fingerprint={"conv": cfg.to_dict(), "lr": lr, "batch_size": batch_size, "n_train": n})
    model = result.params
    test = data["test"]
    loss, acc = jax.jit(classifier_loss)(model, jnp.asarray(test["images"]), jnp.asarray(test["labels"]))
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    return model, {"test_accuracy": float(acc["accuracy"]), "test_loss": float(loss),
                   "final_loss": losses[-1] if losses else None}


def save_conv(folder: str | Path, model: ConvNet) -> None:
    """Weights (safetensors) and the config, reloadable by :func:`load_conv`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", model)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))


def load_conv(folder: str | Path) -> ConvNet:
    folder = Path(folder)
    cfg = ConvConfig.from_dict(json.loads((folder / "config.json").read_text()))
    return load_weights(folder / "model.safetensors", init_conv(cfg, jax.random.key(0)))
