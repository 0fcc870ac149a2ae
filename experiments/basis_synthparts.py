"""Interpretable bases of the synthparts ConvNet: natural units vs random rotation vs UIBE vs IBD, dissected.

    python -m experiments.basis_synthparts [--config tiny|paper] [--workdir runs/basis_synthparts] [key=value ...]

A thin wrapper around ``jinterp.methods.basis.program.run``; the table in experiments/README.md
("Interpretable basis") comes from its ``results.json``. Also prints the planted-concept check.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def planted_check(seed: int = 0) -> dict:
    from jinterp.methods.basis import planted, uibe

    cfg = uibe.UIBEConfig(num_directions=3, batch_size=512, epochs=60, lr=0.1, restarts=4, standardization="global",
                          plateau_patience=5, plateau_cooldown=2, seed=seed)
    out = {}
    for name in ("spec", "separable"):
        g = planted.generate(getattr(planted.PlantedConfig, name)(num_pixels=8192, seed=seed))
        res = uibe.fit(g.pixels, cfg)
        s = g.concepts / np.asarray(res.standardizer.std)[:, None]
        cos, cols = planted.recovery(res.basis, s / np.linalg.norm(s, axis=0))
        on = np.asarray(uibe.project(res, g.pixels)) > uibe.detector_thresholds(res)
        iou = [float((on[:, cols[c]] & g.labels[:, c]).sum() / (on[:, cols[c]] | g.labels[:, c]).sum())
               for c in range(3)]
        out[name] = {"cosine": cos.round(3).tolist(), "iou": np.round(iou, 3).tolist()}
    return out


def main(argv=None) -> int:
    from jinterp.core import config as cfglib
    from jinterp.methods.basis.config import BasisConfig
    from jinterp.methods.basis.program import run

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--workdir", default="runs/basis_synthparts")
    p.add_argument("--no-planted", action="store_true")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if not a.no_planted:
        print("planted:", json.dumps(planted_check()))
    res = run(cfglib.apply_overrides(cfglib.preset(BasisConfig, a.config), a.overrides), a.workdir)
    for k, v in res["bases"].items():
        print(f"{k:10s} dirs {v['directions']:4d} S1 {v['S1']:7.2f} S2 {v['S2']:6.2f} det {v['detectors']:4d} "
              f"uniq {v['unique_detectors']:3d}  {v['detectors_by_category']}")
    print(json.dumps(res["wall_times_s"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
