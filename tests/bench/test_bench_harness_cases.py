"""Harness options a case can carry: its own repeat / warm-up counts, a measured tolerance, extra row fields."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.bench import harness

torch = pytest.importorskip("torch")


def _counting_case(**kw) -> tuple[harness.Case, dict]:
    calls = {"jax": 0, "torch": 0}
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    f = jax.jit(lambda x: x @ x)

    def jax_fn():
        calls["jax"] += 1
        return f(jnp.asarray(a))

    def torch_fn():
        calls["torch"] += 1
        return torch.from_numpy(a) @ torch.from_numpy(a)

    return harness.Case("toy.count", {}, jax_fn, torch_fn, lambda: 0.0, **kw), calls


def test_a_case_s_own_repeats_and_warmup_override_the_run_s():
    case, calls = _counting_case(repeats=2, warmup=0)
    row = harness.time_case(case, repeats=7, warmup=2)
    assert (row["repeats"], row["warmup"]) == (2, 0)
    assert len(row["jax"]["times_s"]) == 2 and len(row["torch"]["times_s"]) == 2
    assert calls == {"jax": 1 + 2, "torch": 2}          # first call + repeats; no warm-up
    case, calls = _counting_case()                       # no override: the run's counts
    row = harness.time_case(case, repeats=3, warmup=1)
    assert (row["repeats"], row["warmup"]) == (3, 1) and calls == {"jax": 1 + 1 + 3, "torch": 1 + 3}


def test_extra_fields_are_merged_into_the_row():
    case, _ = _counting_case(repeats=1, warmup=0, extra=lambda: {"peak_rss_mb": harness.peak_rss_mb()})
    row = harness.time_case(case)
    assert row["peak_rss_mb"] > 10                       # a Python process with jax and torch loaded


@pytest.mark.parametrize("measured, diff, agree", [(1e-2, 5e-3, True), (1e-2, 2e-2, False), (1e-9, 5e-5, True),
                                                   (1e-9, 2e-4, False)])
def test_a_measured_tolerance_is_recorded_and_never_looser_than_atol_demands(measured, diff, agree):
    case, _ = _counting_case(repeats=1, warmup=0, atol=1e-4)
    case.check = lambda: {"max_abs_diff": diff, "atol": measured, "ref_spread": measured / 4}
    row = harness.time_case(case)
    assert row["agree"] is agree and row["atol"] == max(1e-4, measured)
    assert row["check"] == {"ref_spread": measured / 4} and row["max_abs_diff"] == diff
    assert ("speedup" in row) is agree
