"""Join a multi-host JAX job when the environment says the process is one of several.

jinterp's data pipeline (``jinterp.data.BatchIterator``) reads per-host shards and its jitted steps run on a mesh over
``jax.devices()``; past one host that only needs ``jax.distributed.initialize()`` to run in every process before
any other JAX call. :func:`maybe_initialize` (called at CLI start) does so when

* ``JINTERP_DISTRIBUTED=1`` (e.g. a Cloud TPU pod, where JAX finds the coordinator from the TPU metadata, or any
  launcher with ``JAX_COORDINATOR_ADDRESS`` plus ``JINTERP_NUM_PROCESSES`` / ``JINTERP_PROCESS_ID``), or
* a multi-process launcher's variables are present: SLURM ``srun`` with more than one task (``SLURM_JOB_ID``,
  ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``, ``SLURM_LOCALID``), Open MPI ``mpirun``
  (``OMPI_MCA_orte_hnp_uri``), or ``JAX_COORDINATOR_ADDRESS``;

and never when ``JINTERP_DISTRIBUTED=0``. JAX's own cluster detection fills in what the variables leave unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from jinterp.errors import ConfigError

_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def detect(env: Mapping[str, str] | None = None) -> str | None:
    """Why this process should join a multi-host job (``"jinterp"``, ``"slurm"``, ``"ompi"``, ``"coordinator"``),
    or None."""
    env = os.environ if env is None else env
    flag = env.get("JINTERP_DISTRIBUTED", "").strip()
    if flag not in ("", "0", "1"):
        raise ConfigError(f"JINTERP_DISTRIBUTED={flag!r}; set it to 1 (join a multi-host job) or 0 (never join)")
    if flag == "0":
        return None
    if flag == "1":
        return "jinterp"
    if all(k in env for k in _SLURM) and env["SLURM_NTASKS"].strip().isdigit() and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env:
        return "ompi"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "coordinator"
    return None


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r} must be a non-negative integer")
    return int(value)


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
    """Call ``jax.distributed.initialize()`` once if :func:`detect` finds a multi-host launch; True if this process
    is (now) part of a distributed job. ``JINTERP_NUM_PROCESSES`` / ``JINTERP_PROCESS_ID`` are passed on when set."""
    import jax

    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    reason = detect(env)
    if reason is None:
        return False
    kw = {k: v for k, v in (("num_processes", _int_env(env, "JINTERP_NUM_PROCESSES")),
                            ("process_id", _int_env(env, "JINTERP_PROCESS_ID"))) if v is not None}
    try:
        jax.distributed.initialize(**kw)
    except (ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split()).rstrip(".")
        raise ConfigError(f"joining the multi-host job (detected: {reason}) failed: {msg}; set "
                          "JAX_COORDINATOR_ADDRESS=host:port, JINTERP_NUM_PROCESSES and JINTERP_PROCESS_ID, or "
                          "JINTERP_DISTRIBUTED=0 to run on this host alone") from None
    return True
