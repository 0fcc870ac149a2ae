"""Data parallelism through ``jax.sharding``: one Mesh with a ``data`` axis, batch sharded, params replicated.

The same jitted step runs on 1 or N devices: jit sees global arrays and XLA inserts the cross-device reductions
(mean loss, BatchNorm statistics, gradient all-reduce), so semantics do not depend on the device count. Past
one host this is JAX's multi-host runtime (``jax.distributed``), not code of ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jinterp.errors import ShapeError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) with axis ``"data"``."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devs), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ShapeError(
            f"batch size {batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. --set batch_size={max(n, batch_size // n * n)})"
        )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Puts a pytree of host arrays (leading axis = batch) onto the mesh, split along ``data``."""
    leaves = jax.tree.leaves(batch)
    if leaves:
        check_batch_size(int(np.shape(leaves[0])[0]), mesh)
    return jax.device_put(batch, data_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
