"""Explainer network on the synthparts convnet: one run + a vmapped λ/η sweep (results in experiments/README.md).

    python -m experiments.explainer_synthparts --workdir runs/explainer_synthparts [--weights W.npz] [--set k=v ...]

Starts from ``ExplainerConfig.tiny()`` (the tiny synthparts convnet, relu3 16x16x64 -> relu4 8x8x64) with the
settings of the README table below; without ``--weights`` the performer is trained first (TrainBackboneConfig.tiny,
``backbone_steps``). Prints the results JSON (without the training curve).
"""

from __future__ import annotations

import argparse
import json
import sys

from jinterp.core.config import apply_overrides
from jinterp.methods.explainer.config import ExplainerConfig
from jinterp.methods.explainer.program import run

SETTINGS = [
    "filters=32", "steps=400", "lam=3.0", "eta=0.1", "optim.lr=1e-3",
    "sweep_lams=0,0.3,3", "sweep_etas=0.1,1", "sweep_steps=250",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/explainer_synthparts")
    ap.add_argument("--weights", default="")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    sets = SETTINGS + ([f"weights={args.weights}"] if args.weights else []) + args.overrides
    cfg = apply_overrides(ExplainerConfig.tiny(), sets)
    res = run(cfg, args.workdir)
    res.pop("train_curve", None)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
