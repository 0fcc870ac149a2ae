"""jinterp.core.distributed: when a process joins a multi-host job (the two-process join itself runs in
test_data_multihost.py, whose workers join through maybe_initialize)."""

import pytest

from jinterp.core.distributed import detect, maybe_initialize
from jinterp.errors import ConfigError

SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"JINTERP_DISTRIBUTED": "1"}, "jinterp"),
    (SLURM, "slurm"),
    ({**SLURM, "SLURM_NTASKS": "1"}, None),                       # a one-task SLURM job is one process
    ({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}, None),  # sbatch shell, not an srun step
    ({**SLURM, "JINTERP_DISTRIBUTED": "0"}, None),                # the user's veto wins
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:3000"}, "ompi"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "coordinator"),
])
def test_detect_reads_the_launchers_variables(env, expected):
    assert detect(env) == expected


def test_bad_settings_are_one_line_errors(monkeypatch):
    import jax

    with pytest.raises(ConfigError, match="JINTERP_DISTRIBUTED='yes'; set it to 1"):
        detect({"JINTERP_DISTRIBUTED": "yes"})
    with pytest.raises(ConfigError, match="JINTERP_PROCESS_ID='first' must be a non-negative integer"):
        maybe_initialize({"JINTERP_DISTRIBUTED": "1", "JINTERP_PROCESS_ID": "first"})

    def no_coordinator(**kw):  # what jax.distributed.initialize raises off a cluster without an address
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_coordinator)
    with pytest.raises(ConfigError, match="coordinator_address should be defined; set JAX_COORDINATOR_ADDRESS"):
        maybe_initialize({"JINTERP_DISTRIBUTED": "1"})


def test_maybe_initialize_joins_only_when_detected_and_passes_the_process_numbers(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert maybe_initialize({}) is False and maybe_initialize(SLURM | {"JINTERP_DISTRIBUTED": "0"}) is False
    assert calls == []
    assert maybe_initialize(SLURM) is True and calls == [{}]  # JAX's SLURM detection fills in the rest
    assert maybe_initialize({"JINTERP_DISTRIBUTED": "1", "JINTERP_NUM_PROCESSES": "2", "JINTERP_PROCESS_ID": "1"})
    assert calls[-1] == {"num_processes": 2, "process_id": 1}
