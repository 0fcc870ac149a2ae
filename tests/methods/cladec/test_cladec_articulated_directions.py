"""ClaDec end to end on tiny articulated synthparts with a trained classifier: the directions that held in every
one of 3 seeds must show in a single run (issue #20 item 4: a program that ignores α, or decodes something other
than the classifier's layer, turns this red).

Margins from ``python -m experiments.cladec_synthparts --preset articulated --seeds 0 1 2`` (experiments/README.md,
"ClaDec"): per seed, the RefAE reconstructs better than ClaDec α = 0, ClaDec's error rises with α, and the frozen
classifier recognises ClaDec α = 0.01's reconstructions far better than α = 0's. The retrain protocol is off here
(it does not change the decoders); its column is judged in the README only.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

from jinterp.core import sharding
from jinterp.methods.cladec import ClaDecConfig
from jinterp.methods.cladec.program import run

pytestmark = pytest.mark.slow  # trains the tiny classifier, a RefAE and a 3-decoder α sweep: minutes on a loaded CPU

REFAE_OVER_CLADEC_MAX = 0.95  # RefAE MSE / ClaDec α=0 MSE: 0.89 / 0.77 / 0.92 for seeds 0 / 1 / 2
MSE_RISE_MIN = 1.1  # MSE(α=0.01) / MSE(α=0) and MSE(α=0.1) / MSE(α=0.01), smallest over seeds 1.18
FROZEN_GAIN_MIN = 0.2  # frozen accuracy α=0.01 minus α=0: 0.44 / 0.41 / 0.50


def test_alpha_trades_fidelity_for_the_classifiers_view(tmp_path, monkeypatch):
    # One device, as in the measured runs (the test session simulates 8 CPU devices; the classifier's training
    # aborted there under load), so that seed 0 here is the table's seed 0.
    one_device = sharding.make_mesh
    monkeypatch.setattr(sharding, "make_mesh", lambda devices=None: one_device(devices or jax.devices()[:1]))
    cfg = dataclasses.replace(ClaDecConfig.tiny(), data="synthparts:preset=articulated", seed=0, retrain_epochs=0)
    res = run(cfg, tmp_path, progress=False)
    src = res["layers"]["relu3"]["sources"]
    mse = {k: src[k]["mse"] for k in ("refae", "cladec@0", "cladec@0.01", "cladec@0.1")}
    assert mse["refae"] < REFAE_OVER_CLADEC_MAX * mse["cladec@0"], mse
    assert mse["cladec@0.01"] > MSE_RISE_MIN * mse["cladec@0"], mse
    assert mse["cladec@0.1"] > MSE_RISE_MIN * mse["cladec@0.01"], mse
    frozen = {k: src[k]["frozen_accuracy"] for k in ("original", "cladec@0", "cladec@0.01")}
    assert frozen["cladec@0.01"] - frozen["cladec@0"] > FROZEN_GAIN_MIN, frozen
    assert frozen["original"] > 0.5, frozen  # the classifier did train (chance is 1/6)
