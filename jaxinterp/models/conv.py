"""A small pure-functional conv net with hook points, for circuits in vision models.

``ConvNet`` is an Equinox module (a pytree of arrays plus a static :class:`ConvConfig`).
Images are ``[batch, height, width, channels]`` in ``[0, 1]``; each block is a
``SAME``-padded convolution, a ReLU and optionally a 2x2 average pool::

    x = images                                      hook_input      [b, y, x, c_in]
    for each block l:
        pre  = conv(x, W[l]) + b[l]                 blocks.{l}.hook_pre   [b, y, x, c_l]
        post = relu(pre)                            blocks.{l}.hook_post
        x    = avg_pool_2x2(post) if pool[l] else post
    pooled = mean over y, x                         hook_pooled     [b, c_L]
    logits = pooled @ W_out + b_out                 hook_logits     [b, n_classes]

Kernels are ``W[l]: [k, k, c_{l-1}, c_l]`` (height, width, in, out: JAX's ``HWIO``), so
``W[l][:, :, i, j]`` is the spatial weight pattern by which channel ``i`` of block
``l - 1`` excites (positive) or inhibits (negative) channel ``j`` of block ``l``: the
weights of a circuit (Olah et al., "Zoom In", 2020). Blocks have different widths, so
they run as a Python loop under ``ji.layer_scope("blocks", l)`` (a conv net has few
layers); ``run_with_cache`` and every intervention work as on the transformer, and
``model.hook_names()`` lets them check names before tracing.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxinterp.errors import ConfigError, ShapeError
from jaxinterp.hooks import hook, layer_scope


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """Shape of a :class:`ConvNet`. ``channels[l]``, ``kernel_sizes[l]`` and ``pool[l]``
    describe block ``l``; images must be ``image_size`` square with ``in_channels``."""

    image_size: int = 32
    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 32)
    kernel_sizes: tuple[int, ...] = (5, 5, 3)
    pool: tuple[bool, ...] = (True, True, False)
    n_classes: int = 10

    def __post_init__(self):
        n = len(self.channels)
        if n == 0 or len(self.kernel_sizes) != n or len(self.pool) != n:
            raise ConfigError(f"channels, kernel_sizes and pool need one entry per block; got "
                              f"{self.channels}, {self.kernel_sizes}, {self.pool}")
        if min(self.channels) < 1 or min(self.kernel_sizes) < 1 or self.in_channels < 1 or self.n_classes < 1:
            raise ConfigError(f"sizes must be positive: {self}")
        side = self.image_size
        for l, pooled in enumerate(self.pool):
            if pooled and (side < 2 or side % 2):
                raise ConfigError(f"image_size {self.image_size} is not divisible by 2 at block {l}'s pool "
                                  f"(a feature map of side {side}); use a multiple of {2 ** sum(self.pool)}")
            side = side // 2 if pooled else side

    @property
    def n_layers(self) -> int:
        return len(self.channels)

    def map_size(self, layer: int) -> int:
        """Side of block ``layer``'s feature map (``hook_pre``/``hook_post``)."""
        return self.image_size // 2 ** sum(self.pool[:layer])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConvConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ConvNet(eqx.Module):
    """A conv net classifier; call it on ``images [batch, y, x, c]`` to get logits."""

    cfg: ConvConfig = eqx.field(static=True)
    W: tuple[Float[Array, "k k c_in c_out"], ...]
    b: tuple[Float[Array, " c_out"], ...]
    W_out: Float[Array, "c n_classes"]
    b_out: Float[Array, " n_classes"]

    def hook_names(self) -> list[str]:
        names = ["hook_input"]
        for l in range(self.cfg.n_layers):
            names += [f"blocks.{l}.hook_pre", f"blocks.{l}.hook_post"]
        return names + ["hook_pooled", "hook_logits"]

    def __call__(self, images: Float[Array, "batch y x c"], *, stop_at_layer: int | None = None) -> Array:
        """Logits ``[batch, n_classes]``; with ``stop_at_layer=l`` the ``hook_post`` of block
        ``l - 1`` (blocks ``0 .. l-1`` run), for objectives that need no later layer."""
        check_images(self.cfg, images)
        x = hook("hook_input", images)
        stop = self.cfg.n_layers if stop_at_layer is None else stop_at_layer
        if not 1 <= stop <= self.cfg.n_layers:
            raise ShapeError(f"stop_at_layer={stop_at_layer} is outside 1..{self.cfg.n_layers}")
        for l in range(stop):
            with layer_scope("blocks", l):
                pre = hook("hook_pre", conv2d(x, self.W[l]) + self.b[l])
                post = hook("hook_post", jax.nn.relu(pre))
            if stop_at_layer is not None and l == stop - 1:
                return post
            x = avg_pool(post) if self.cfg.pool[l] else post
        pooled = hook("hook_pooled", jnp.mean(x, axis=(1, 2)))
        return hook("hook_logits", pooled @ self.W_out + self.b_out)


def conv2d(x: Float[Array, "b y x i"], w: Float[Array, "k k i o"]) -> Float[Array, "b y x o"]:
    """``SAME``-padded stride-1 convolution (cross-correlation, as every framework does)."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def avg_pool(x: Float[Array, "b y x c"]) -> Float[Array, "b y2 x2 c"]:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def check_images(cfg: ConvConfig, images) -> None:
    """Raises a clear error for images the net cannot take (rank, size, channels, dtype)."""
    shape = getattr(images, "shape", None)
    want = (cfg.image_size, cfg.image_size, cfg.in_channels)
    if shape is None or len(shape) != 4:
        raise ShapeError(f"images must be [batch, {want[0]}, {want[1]}, {want[2]}] (NHWC), got shape {shape}")
    if tuple(shape[1:]) != want:
        raise ShapeError(f"this ConvNet takes {want[0]}x{want[1]} images with {want[2]} channel(s) "
                         f"(shape [batch, {want[0]}, {want[1]}, {want[2]}]), got shape {tuple(shape)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ShapeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")


@functools.partial(jax.jit, static_argnums=0)
def init_conv(cfg: ConvConfig, key: jax.Array) -> ConvNet:
    """He-normal kernels (``std = sqrt(2 / fan_in)``), zero biases (one compiled program)."""
    keys = jax.random.split(key, cfg.n_layers + 1)
    W, b, c_in = [], [], cfg.in_channels
    for l, (c, k) in enumerate(zip(cfg.channels, cfg.kernel_sizes, strict=True)):
        std = math.sqrt(2.0 / (k * k * c_in))
        W.append(std * jax.random.normal(keys[l], (k, k, c_in, c)))
        b.append(jnp.zeros((c,)))
        c_in = c
    W_out = jax.random.normal(keys[-1], (c_in, cfg.n_classes)) / math.sqrt(c_in)
    return ConvNet(cfg, tuple(W), tuple(b), W_out, jnp.zeros((cfg.n_classes,)))


def classifier_loss(model: ConvNet, images, labels) -> tuple[Array, dict]:
    """Mean cross-entropy and accuracy of the logits against integer ``labels``."""
    logits = model(images)
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
