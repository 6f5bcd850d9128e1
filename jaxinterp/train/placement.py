"""Where the training state lives, made explicit so a run compiles its step once.

``jax.jit`` compiles one program per combination of argument placements, and an array
placed explicitly ("committed") counts differently from one left on the default device.
A fresh run's state is mostly uncommitted, while arrays restored from a checkpoint, and
every step's outputs, are committed; left alone, a resumed run would compile the step
again, possibly to a different program. So before the first step (and before restoring,
whose template gives the placement) every leaf is committed:

* a leaf already spread over the run's devices keeps its sharding (model- or
  data-parallel parameters stay as the caller placed them);
* anything else (optimiser counters, the RNG key, the NaN flag, single-device leaves of
  a multi-device run) is replicated over the same devices as the parameters.

On one device all of this is a no-op apart from marking arrays committed; on a mesh it
keeps every argument on one device set, which ``jit`` requires. With several processes
(``jax.distributed``), a host value is replicated by having every process supply its
own copy for its own devices (the values are the same everywhere: they come from the
same seed and configuration).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

PyTree = Any


def replicated_sharding(params: PyTree) -> jax.sharding.Sharding | None:
    """A fully replicated sharding over the devices the parameters use (None: leave as is)."""
    shardings = [x.sharding for x in jax.tree.leaves(params) if isinstance(x, jax.Array)]
    if not shardings:
        return SingleDeviceSharding(jax.devices()[0])
    widest = max(shardings, key=lambda s: len(s.device_set))
    if len(widest.device_set) == 1:
        return SingleDeviceSharding(next(iter(widest.device_set)))
    if isinstance(widest, NamedSharding):
        return NamedSharding(widest.mesh, PartitionSpec())
    return None


def commit(tree: PyTree, replicated: jax.sharding.Sharding | None) -> PyTree:
    """Commit every array leaf: keep multi-device shardings, replicate the rest."""
    if replicated is None:
        return tree
    n_devices = len(replicated.device_set)

    def place(x: Any) -> Any:
        if isinstance(x, jax.Array) and len(x.sharding.device_set) == n_devices:
            return jax.device_put(x, x.sharding)
        if isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex)):
            if not replicated.is_fully_addressable:
                return _replicate_across_processes(x, replicated)
            return jax.device_put(x, replicated)  # jit would make Python numbers arrays anyway
        return x

    return jax.tree.map(place, tree)


def _replicate_across_processes(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a value every process holds (PRNG keys through their data)."""
    is_key = isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    host = np.asarray(jax.random.key_data(x) if is_key else x)
    out = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.random.wrap_key_data(out, impl=jax.random.key_impl(x)) if is_key else out


def copy_arrays(tree: PyTree) -> PyTree:
    """Fresh buffers for every array leaf (the step donates its inputs; callers keep theirs)."""
    return jax.tree.map(
        lambda x: jnp.copy(x) if isinstance(x, (jax.Array, np.ndarray)) else x, tree
    )
