"""The interpretable-basis benchmark compares like with like: every quick case's JAX and PyTorch outputs agree.

Agreement is the property (speed is only measured by ``python -m experiments.bench.basis``): a UIBE Adam step
(updated Q/M/b), the dissection tally of one batch (exact counts, also against the NetDissect-Lite-style loop) and
an IBD hard-negative epoch over all concepts (updated classifiers).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from experiments.bench import basis  # noqa: E402

CASES = basis.cases(quick=True)


def test_quick_cases_cover_every_pipeline():
    assert {c.pipeline for c in CASES} == {"basis.uibe_step", "basis.uibe_step_polar", "basis.tally",
                                           "basis.tally_vs_ndl_loop", "basis.ibd_epoch"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.pipeline)
def test_jax_and_torch_agree(case):
    diff = case.check()
    assert np.isfinite(diff) and diff <= case.atol, (case.params, diff)


def test_tally_inputs_are_not_vacuous():
    """Exact agreement means something only if the masks hit concepts and the thresholds are tie-free."""
    acts, th, dead, cs = basis.tally_inputs(8, 8, 32, 32, (6, 8, 11, 4))
    assert dead[:2].all() and not dead[2:].any()
    up = np.einsum("Hh,bhwu,Ww->buHW", basis.dis._bilinear_matrix(8, 32), acts, basis.dis._bilinear_matrix(8, 32))
    gap = np.abs(up - th[None, :, None, None])[:, 2:]
    assert gap.min() > 1e-4                              # no upsampled value near a threshold
    frac = (up >= th[None, :, None, None])[:, 2:].mean()
    assert 0.001 < frac < 0.1                            # a top-quantile-like activation rate
    assert len(np.unique(cs.pixel_labels)) > 10
    valid = np.ones(8, bool)
    t = basis.dis._tally_batch(basis.dis.empty_tally(32, cs.num_concepts, len(cs.categories)), acts, th, dead, valid,
                               cs.pixel_labels, cs.image_labels, cs.category_of, basis.dis._bilinear_matrix(8, 32),
                               basis.dis._bilinear_matrix(8, 32), max_labels=16, num_categories=len(cs.categories))
    inter = np.asarray(t.intersection)[:, 1:]
    assert (inter > 0).sum() > 100 and not inter[:2].any()   # many unit-concept hits; dead units none
