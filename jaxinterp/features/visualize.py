"""Feature visualisation by optimisation: the input that most excites a unit.

Start from a random image in some parameterisation ``theta`` and climb the target's
activation by gradient ascent, with a fresh random transform ``T`` every step and
regularisers ``R`` (Erhan et al. 2009; Olah, Mordvintsev and Schubert 2017)::

    theta <- theta + adam( grad_theta [ mean_i z(T(image_i(theta))) - sum_r w_r R_r(image) ] )

where ``z`` is the objective's pre-activation (:mod:`~jaxinterp.features.objectives`) and
``i`` runs over ``n_images`` images per target (with a ``diversity`` weight they are
pushed apart). The whole optimisation of one target is a ``lax.scan`` over steps; many
targets are ``jax.vmap``-ped over the objective's target axis, so visualising 64 units is
**one compiled program** (``vectorize=False`` loops over targets with one program per
target shape, the baseline the benchmark compares against).

The final images are measured without transforms: ``result.activation`` is the target's
activation (after ReLU/JumpReLU for SAE features) on the image it ends with, to compare
with the top dataset example's (:func:`~jaxinterp.features.examples.dataset_examples`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.features.objectives import Objective, check_objective
from jaxinterp.features.param import Fourier, Pixel, parameterisation
from jaxinterp.features.robustness import Transforms, diversity, l1, total_variation
from jaxinterp.hooks import run_with_cache
from jaxinterp.named import NamedArray


@dataclasses.dataclass(frozen=True)
class Visualization:
    """``images [target, image, y, x, c]`` in [0, 1]; ``activation`` and ``pre_activation``
    ``[target, image]`` measured on them untransformed; ``history [target, step]``, the mean
    pre-activation under the random transforms while optimising."""

    images: np.ndarray
    activation: NamedArray
    pre_activation: NamedArray
    history: NamedArray
    objective: Any


class CustomObjective(eqx.Module):
    """A user function ``fn(act [batch, ...]) -> [batch]`` of the activation at ``hook``,
    maximised as it is. Build with :func:`custom`."""

    hook: str = eqx.field(static=True)
    fn: Callable = eqx.field(static=True)

    @property
    def n_targets(self) -> int:
        return 1

    def surrogate(self, act):
        return self.fn(act)

    value = surrogate


def custom(hook: str, fn: Callable) -> CustomObjective:
    """An arbitrary differentiable objective on the activation at ``hook``."""
    if not callable(fn):
        raise ConfigError(f"custom objective needs a callable, got {type(fn).__name__}")
    return CustomObjective(hook, fn)


def hook_shape(model: Callable, hook: str, image_shape: tuple[int, int, int], **kwargs) -> tuple[int, ...]:
    """Shape of the activation at ``hook`` for one image (abstract evaluation, no FLOPs)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return tuple(jax.eval_shape(lambda im: run_with_cache(model, im, names=[hook], **kwargs)[1][hook], x).shape)


def model_image_shape(model: Any, image_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """The ``(y, x, c)`` the model takes: checked against a ConvNet's config, or required."""
    from jaxinterp.models.conv import ConvNet, check_images

    if image_shape is None:
        if not isinstance(model, ConvNet):
            raise ConfigError("image_shape=(height, width, channels) is required for models other than ConvNet")
        c = model.cfg
        image_shape = (c.image_size, c.image_size, c.in_channels)
    if len(tuple(image_shape)) != 3:
        raise ShapeError(f"image_shape must be (height, width, channels), got {image_shape}")
    if isinstance(model, ConvNet):
        check_images(model.cfg, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    return tuple(int(s) for s in image_shape)


def check_differentiable(objective: CustomObjective, act_shape: tuple[int, ...]) -> None:
    """Raises ConfigError unless ``objective`` gives ``[batch]`` floats with a nonzero gradient."""
    act = jax.random.uniform(jax.random.key(0), act_shape, minval=0.1, maxval=1.0)
    try:
        out = objective.fn(act)
        grad = jax.grad(lambda a: jnp.sum(objective.fn(a)))(act)
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as err:
        raise ConfigError(f"the objective on {objective.hook!r} is not differentiable with JAX: "
                          f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    if getattr(out, "shape", None) != act_shape[:1] or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ConfigError(f"the objective must return floats of shape [batch]={act_shape[:1]}, got "
                          f"{getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}")
    if not bool(jnp.any(grad != 0)):
        raise ConfigError(f"the objective on {objective.hook!r} has zero gradient with respect to the activation: "
                          "it is not differentiable (argmax, rounding, comparisons and integer casts give no "
                          "gradient); optimise a smooth score such as the activation itself")


def _stop_kwargs(model: Any, hooks: list[str]) -> dict:
    """For a ConvNet, run only the blocks up to the deepest hook needed."""
    from jaxinterp.models.conv import ConvNet

    if not isinstance(model, ConvNet):
        return {}
    layers = []
    for h in hooks:
        parts = h.split(".")
        if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit():
            return {}
        layers.append(int(parts[1]))
    return {"stop_at_layer": max(layers) + 1}


def visualize(model: Callable, objective: Objective | CustomObjective, *,
              image_shape: tuple[int, int, int] | None = None, param: str | Pixel | Fourier = "fourier",
              steps: int = 256, lr: float = 0.05, n_images: int = 1, transforms: Transforms | None = None,
              l1_weight: float = 0.0, tv_weight: float = 0.0, diversity_weight: float = 0.0,
              diversity_hook: str | None = None, seed: int = 0, vectorize: bool = True) -> Visualization:
    """Optimises ``n_images`` inputs per target of ``objective`` to maximise it.

    Args:
      model: a :class:`~jaxinterp.models.conv.ConvNet` or any function of images
        ``[batch, y, x, c]`` whose code calls ``ji.hook`` (then pass ``image_shape``).
      objective: from :func:`~jaxinterp.features.objectives.channel`, ``neuron``,
        ``direction``, ``sae_feature``, or :func:`custom`.
      param: ``"fourier"`` (decorrelated, default), ``"pixel"``, or an instance.
      transforms: random jitter/scale/rotation each step (default ``Transforms()``; pass
        ``NO_TRANSFORMS`` to optimise the bare image).
      l1_weight, tv_weight: regulariser weights; ``diversity_weight`` (with ``n_images > 1``)
        penalises similar Gram matrices at ``diversity_hook`` (default: the objective's hook).
      vectorize: all targets in one vmapped program (default) or one after another.
    """
    if steps < 1 or n_images < 1 or lr <= 0:
        raise ConfigError(f"steps and n_images must be >= 1 and lr > 0; got {steps}, {n_images}, {lr}")
    shape = model_image_shape(model, image_shape)
    param = parameterisation(param, (n_images, *shape))
    transforms = Transforms() if transforms is None else transforms
    hooks = [objective.hook] + ([diversity_hook] if diversity_hook and diversity_hook != objective.hook else [])
    kwargs = _stop_kwargs(model, hooks)
    act_shape = (n_images, *hook_shape(model, objective.hook, shape, **kwargs)[1:])
    if isinstance(objective, CustomObjective):
        check_differentiable(objective, act_shape)
    else:
        objective = check_objective(objective, act_shape)
    settings = _Settings(shape, param, steps, float(lr), n_images, transforms, float(l1_weight), float(tv_weight),
                         float(diversity_weight), tuple(hooks), diversity_hook or objective.hook,
                         tuple(sorted(kwargs.items())))

    keys = jax.random.split(jax.random.key(seed), objective.n_targets)
    if vectorize:
        out = _optimise_batched(model, objective, keys, settings)
    else:
        parts = [_optimise_single(model, jax.tree.map(lambda a, i=i: a[i], objective), keys[i], settings)
                 for i in range(objective.n_targets)]
        out = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    images, value, pre, history = jax.device_get(out)
    return Visualization(
        images=np.asarray(images),
        activation=NamedArray(value, ("target", "image"), attrs={"hook": objective.hook}),
        pre_activation=NamedArray(pre, ("target", "image"), attrs={"hook": objective.hook}),
        history=NamedArray(history, ("target", "step"), attrs={"hook": objective.hook}),
        objective=objective,
    )


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything static about one optimisation: the key of its compiled program."""

    shape: tuple[int, int, int]
    param: Any
    steps: int
    lr: float
    n_images: int
    transforms: Transforms
    l1_weight: float
    tv_weight: float
    diversity_weight: float
    hooks: tuple[str, ...]
    div_hook: str
    model_kwargs: tuple


def _optimise_one(model, obj, key, s: _Settings):
    """The whole optimisation of one target: ``lax.scan`` over steps of adam."""
    optimizer = optax.adam(s.lr)
    kwargs = dict(s.model_kwargs)

    def activations(images):
        _, cache = run_with_cache(model, images, names=list(s.hooks), **kwargs)
        return cache[obj.hook], cache[s.div_hook]

    def loss(params, k):
        images = s.param.image(params)
        act, div_act = activations(s.transforms(k, images))
        z = obj.surrogate(act).mean()
        total = z - s.l1_weight * l1(images) - s.tv_weight * total_variation(images)
        if s.diversity_weight:
            total = total - s.diversity_weight * diversity(div_act)
        return -total, z

    def step(carry, k):
        p, state = carry
        (_, z), g = jax.value_and_grad(loss, has_aux=True)(p, k)
        updates, state = optimizer.update(g, state, p)
        return (optax.apply_updates(p, updates), state), z

    k_init, k_steps = jax.random.split(key)
    params = s.param.init(k_init, (s.n_images, *s.shape))
    (params, _), history = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(k_steps, s.steps))
    images = s.param.image(params)
    act, _ = activations(images)
    return images, obj.value(act), obj.surrogate(act), history


@eqx.filter_jit
def _optimise_batched(model, objective, keys, settings: _Settings):
    """Every target at once: one compiled program (cached across calls with equal settings)."""
    return jax.vmap(lambda o, k: _optimise_one(model, o, k, settings))(objective, keys)


@eqx.filter_jit
def _optimise_single(model, obj, key, settings: _Settings):
    return _optimise_one(model, obj, key, settings)
