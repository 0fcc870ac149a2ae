"""CSG end to end on tiny articulated synthparts: the paper's one direction that held over 3 seeds here, MIS above
standard training's, must show in a single run (issue #20 item 4: a gate that does not learn, a gated path that
does not train, or MIS read from the wrong place turns this red).

Margin from ``python -m experiments.csg_synthparts --preset articulated --seeds 0 1 2`` (experiments/README.md,
"Class-specific gates"): CSG MIS minus standard MIS was 0.013 / 0.019 / 0.010 for seeds 0 / 1 / 2 (CSG 0.172 ±
0.004, standard 0.158 ± 0.006); the test asks for half the smallest gap. Accuracy, localization and the gate
detector did not beat standard training there, so nothing is asserted about them.
"""

from __future__ import annotations

import dataclasses

import pytest

from jinterp.methods.csg import CSGConfig
from jinterp.methods.csg.program import run

pytestmark = pytest.mark.slow  # two tiny trainings (CSG + standard) and their evaluation, minutes on a loaded CPU

MIS_MARGIN = 0.005  # half of the smallest per-seed gap (0.010, seed 2)


def test_csg_raises_mis_over_standard_training(tmp_path):
    # the measured setting (tiny, articulated, seed 0); only the adversarial part, which MIS does not read, is cut
    cfg = dataclasses.replace(CSGConfig.tiny(), data="synthparts:preset=articulated", seed=0, seeds=1, adv_size=8,
                              pgd_steps=1)
    res = run(cfg, tmp_path, progress=False)
    csg, std = res["models"]["csg"], res["models"]["standard"]
    assert csg["density"] < 0.5  # the gate moved off its 0.5 start: gated epochs ran
    assert csg["mis"] - std["mis"] >= MIS_MARGIN, (csg["mis"], std["mis"])
