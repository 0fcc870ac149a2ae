"""Explainer network on the synthparts convnet (results in experiments/README.md).

    python -m experiments.explainer_synthparts --workdir runs/explainer_synthparts [--weights W.npz] [--set k=v ...]
    python -m experiments.explainer_synthparts --seeds 0,1,2 --workdir runs/explainer_seeds [--set k=v ...]

One run (default): starts from ``ExplainerConfig.tiny()`` (the tiny synthparts convnet, relu3 16x16x64 -> relu4
8x8x64) with the settings of the README table; without ``--weights`` the performer is trained first
(TrainBackboneConfig.tiny, ``backbone_steps``). Prints the results JSON (without the training curve).

``--seeds``: the articulated-synthparts protocol of the README's 3-seed table (the settings of
``tests/methods/explainer/test_explainer_program_behaviour.py::_cfg``): per seed, a run that trains its performer,
then the same explainer on that performer's architecture with re-initialized weights (``randomize_backbone``);
``--set`` applies to both (e.g. a remedy). Prints per-seed rows and mean ± std (ddof 0) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from jinterp.core.config import apply_overrides
from jinterp.methods.explainer.config import ExplainerConfig
from jinterp.methods.explainer.program import run

SETTINGS = [
    "filters=32", "steps=400", "lam=3.0", "eta=0.1", "optim.lr=1e-3",
    "sweep_lams=0,0.3,3", "sweep_etas=0.1,1", "sweep_steps=250",
]

# The program behaviour tests' small articulated setting (keep in step with their ``_cfg``).
ARTICULATED = dict(data="synthparts:preset=articulated", train_size=160, test_size=96, image_size=32,
                   backbone_steps=60, steps=40, batch_size=16, eval_batch_size=96, sweep_steps=0, filters=8,
                   log_every=5, ckpt_every=0, num_figure_filters=2, layer="relu3", target="relu4")


def summary(res: dict) -> dict:
    """Per unit set: instability, its baselines, share on the most common cell, parts covered."""
    out = {"relative_error": res["relative_error"], "accuracy": res.get("accuracy"),
           "accuracy_replaced": res.get("accuracy_replaced")}
    for name, b in res["instability_baselines"].items():
        d = res["filter_diversity"][name]
        out[name] = {"instability": b["method"], "centre": b["centre"], "mean_position": b["mean_position"],
                     "random": b["random"], "beats": b["beats_baselines"],
                     "share": d["share_on_most_common_cell"], "parts_covered": d.get("parts_covered")}
    return out


def seeds_protocol(seeds: list[int], workdir: Path, overrides: list[str]) -> dict:
    rows = {}
    for seed in seeds:
        cfg = apply_overrides(dataclasses.replace(ExplainerConfig.tiny(), **ARTICULATED), [f"seed={seed}"]
                              + overrides)
        base = run(cfg, workdir / f"seed{seed}", progress=False)
        rnd = run(dataclasses.replace(cfg, weights=base["performer"]["weights"], randomize_backbone=True),
                  workdir / f"seed{seed}_random", progress=False)
        rows[seed] = {"trained": summary(base), "randomized": summary(rnd),
                      "backbone_test_accuracy": base["performer"].get("backbone_test_accuracy")}
        print(json.dumps({seed: rows[seed]}), flush=True)
    agg: dict = {}
    for which in ("trained", "randomized"):
        for name, v in rows[seeds[0]][which].items():
            if not isinstance(v, dict):
                continue
            for k in ("instability", "centre", "mean_position", "random", "share", "parts_covered"):
                vals = np.array([rows[s][which][name][k] for s in seeds], float)
                agg.setdefault(which, {}).setdefault(name, {})[k] = [float(vals.mean()), float(vals.std())]
            agg[which][name]["beats"] = sum(bool(rows[s][which][name]["beats"]) for s in seeds)
    return {"seeds": rows, "mean_std": agg}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/explainer_synthparts")
    ap.add_argument("--weights", default="")
    ap.add_argument("--seeds", default="", help="comma-separated seeds: the articulated 3-seed protocol")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    if args.seeds:
        out = seeds_protocol([int(s) for s in args.seeds.split(",")], Path(args.workdir), args.overrides)
        print(json.dumps(out["mean_std"], indent=1))
        return 0
    sets = SETTINGS + ([f"weights={args.weights}"] if args.weights else []) + args.overrides
    cfg = apply_overrides(ExplainerConfig.tiny(), sets)
    res = run(cfg, args.workdir)
    res.pop("train_curve", None)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
