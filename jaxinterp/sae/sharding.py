"""Where an SAE and its batches live on a device mesh with ``data`` and ``model`` axes.

The batch is split over ``data`` (each device group sees ``batch / n_data`` rows); the
dictionary over ``model``: ``W_enc`` by columns and ``W_dec`` by rows, so each device holds
``d_sae / n_model`` latents with their encoder column, decoder row, bias and threshold.
``b_dec`` and ``W_skip`` are replicated. ``jax.jit`` then compiles one SPMD program: the
encoder matmul is local, the decoder's contraction over latents ends in a reduction
across ``model``, gradients of replicated parameters are reduced across ``data``. The
same code runs on 1 device, 8 simulated CPU devices, a GPU host or a TPU pod slice.

With several processes (``jax.distributed.initialize``; one per host), the mesh spans
every process's devices and each process places only the rows its devices hold
(:func:`place_batch`). Every process computes the same global batch from the step
number (batches are a function of the step), so no data moves between hosts.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxinterp.errors import ConfigError

AXES = ("data", "model")


def parse_mesh(spec: str | dict[str, int] | None) -> dict[str, int]:
    """``"data=4,model=2"`` (or a dict) as ``{"data": 4, "model": 2}``; ``""`` means one device.

    ``-1`` for one axis takes the devices left over (``data=-1,model=2``).
    """
    if spec is None or spec == "" or spec == {}:
        return {"data": 1, "model": 1}
    if isinstance(spec, str):
        out = {}
        for part in spec.split(","):
            name, _, value = part.partition("=")
            try:
                out[name.strip()] = int(value)
            except ValueError:
                raise ConfigError(f"Mesh spec {spec!r}: expected axis=int pairs like "
                                  "'data=4,model=2'.") from None
        spec = out
    unknown = set(spec) - set(AXES)
    if unknown:
        raise ConfigError(f"Unknown mesh axes {sorted(unknown)}; the SAE mesh has axes {AXES}.")
    sizes = {a: int(spec.get(a, 1)) for a in AXES}
    n_devices = jax.device_count()
    if sum(v == -1 for v in sizes.values()) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
        raise ConfigError(f"Mesh sizes must be positive (one may be -1); got {spec}.")
    for a, v in sizes.items():
        if v == -1:
            other = math.prod(s for b, s in sizes.items() if b != a)
            sizes[a] = n_devices // other
    if math.prod(sizes.values()) > n_devices:
        raise ConfigError(f"Mesh {sizes} needs {math.prod(sizes.values())} devices; "
                          f"{n_devices} are visible.")
    return sizes


def make_mesh(spec: str | dict[str, int] | None) -> Mesh:
    """A :class:`Mesh` with axes ``("data", "model")`` over the first devices."""
    sizes = parse_mesh(spec)
    n = sizes["data"] * sizes["model"]
    devices = np.asarray(jax.devices()[:n]).reshape(sizes["data"], sizes["model"])
    return Mesh(devices, AXES)


def check_divides(mesh: Mesh, d_sae: int, batch_size: int, what: str = "SAE") -> None:
    """Errors unless ``model`` divides ``d_sae`` and ``data`` divides the batch."""
    n_model, n_data = mesh.shape["model"], mesh.shape["data"]
    if d_sae % n_model:
        raise ConfigError(f"The mesh's model axis ({n_model}) does not divide d_sae={d_sae} of "
                          f"{what}; choose a width that is a multiple of {n_model}.")
    if batch_size % n_data:
        raise ConfigError(f"The mesh's data axis ({n_data}) does not divide batch_size={batch_size}.")


_BY_LATENT = {"W_enc": P(None, "model"), "W_dec": P("model", None)}
_VECTOR = ("b_enc", "threshold", "b_gate", "b_mag", "r_mag")


def sae_shardings(sae: Any, mesh: Mesh) -> Any:
    """A pytree of ``NamedSharding`` matching ``sae`` (latents over ``model``)."""
    def spec(path: tuple, leaf: Any) -> Any:
        if not hasattr(leaf, "shape"):
            return leaf
        name = getattr(path[-1], "name", "")
        if name in _BY_LATENT:
            return NamedSharding(mesh, _BY_LATENT[name])
        if name in _VECTOR:
            return NamedSharding(mesh, P("model"))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(spec, sae)


def latent_sharding(mesh: Mesh) -> NamedSharding:
    """Per-latent vectors (densities, dead counters): split over ``model``."""
    return NamedSharding(mesh, P("model"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(tree: Any, shardings: Any) -> Any:
    """``device_put`` of every array leaf of ``tree`` with the matching sharding (on a
    one-device mesh, plainly on that device: the training loop keeps single-device
    state as such, and mixing the two kinds would compile the step twice)."""
    def one(x: Any, s: Any) -> Any:
        if not hasattr(x, "shape"):
            return x
        return jax.device_put(x, s if s.mesh.size > 1 else next(iter(s.device_set)))

    return jax.tree.map(one, tree, shardings)


def place_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch split over ``data`` (each process uploads only its devices' rows)."""
    sharding = NamedSharding(mesh, P("data"))
    if mesh.size == 1:
        return {k: jax.device_put(v, mesh.devices.flat[0]) for k, v in batch.items()}
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batch.items()}
