"""Generic optax training: one jitted step, progress, checkpoint/resume, NaN guard.

``train(loss_fn, params, optimizer, batch_fn, TrainConfig(...))`` is the entry point;
``make_train_step`` is the compiled step on its own, for loops of your own.
"""

from jaxinterp.train.config import TrainConfig, TrainResult
from jaxinterp.train.loop import train
from jaxinterp.train.step import all_finite, make_train_step

__all__ = ["TrainConfig", "TrainResult", "all_finite", "make_train_step", "train"]
