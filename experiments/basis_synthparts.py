"""Interpretable bases of the synthparts ConvNet: natural units vs random rotation vs UIBE vs IBD, dissected.

    python -m experiments.basis_synthparts [--config tiny|paper] [--workdir runs/basis_synthparts] [key=value ...]
    python -m experiments.basis_synthparts --sweep --weights W.npz [--epochs 10,30,100] [--seeds 0]
        [--trainers weighted,augmented_lagrangian] [key=value ...]     # UIBE trainer × epochs, with baselines

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


SWEEP_KEYS = ("uibe@own", "uibe@q", "natural@q", "random@q", "random@rate", "ibd@own", "ibd@q")


def sweep(base, weights: str, trainers, epochs, seeds, workdir: str, al_lr: float | None = None) -> list[dict]:
    """UIBE per trainer × epochs × seed on one trained backbone, each run with its baselines (issue #20):
    S¹/S² and firing rate of every basis, the number of UIBE directions labelled with a texture (an image-level
    concept: a detector firing on whole images), L^s at the first and last epoch. One row per run, printed as JSON."""
    import dataclasses

    from jinterp.methods.basis.program import run

    rows = []
    for trainer in trainers:
        for ep in epochs:
            for seed in seeds:
                u = dataclasses.replace(base.uibe, trainer=trainer, epochs=ep)
                if trainer == "augmented_lagrangian" and al_lr is not None:
                    u = dataclasses.replace(u, al_lr=al_lr)
                cfg = dataclasses.replace(base, weights=weights, seed=seed, uibe=u, figure_directions=1,
                                          figure_images=1)
                res = run(cfg, f"{workdir}/{trainer}_e{ep}_s{seed}", progress=False, restart=True)
                b = res["bases"]
                row = dict(trainer=trainer, epochs=ep, seed=seed, lr=u.al_lr if trainer != "weighted" else u.lr,
                           **{f"{k} {m}": b[k][m] for k in SWEEP_KEYS if k in b for m in ("S1", "S2")},
                           **{f"{k} rate": b[k]["firing_rate_val"] for k in SWEEP_KEYS if k in b},
                           texture_labelled=b["uibe@own"]["labels_by_category"].get("texture", 0),
                           directions=b["uibe@own"]["directions"],
                           L_s_first=b["uibe@own"]["first_loss"][1], L_s_last=b["uibe@own"]["final_loss"][1],
                           L_ma_last=b["uibe@own"]["final_loss"][2], M=b["uibe@own"]["margin"],
                           multipliers=b["uibe@own"]["multipliers"], verdicts=res["verdicts"],
                           fit_s=res["wall_times_s"].get("uibe_fit_s"))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> int:
    from jinterp.core import config as cfglib
    from jinterp.methods.basis.config import BasisConfig
    from jinterp.methods.basis.program import run

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--workdir", default="runs/basis_synthparts")
    p.add_argument("--no-planted", action="store_true")
    p.add_argument("--sweep", action="store_true", help="UIBE trainer x epochs x seeds, with baselines")
    p.add_argument("--weights", default="", help="trained backbone for --sweep")
    p.add_argument("--trainers", default="weighted,augmented_lagrangian")
    p.add_argument("--epochs", default="10,30,100")
    p.add_argument("--seeds", default="0")
    p.add_argument("--al-lr", type=float, default=None, help="lr of the augmented-Lagrangian runs in --sweep")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if a.sweep:
        base = cfglib.apply_overrides(cfglib.preset(BasisConfig, a.config), a.overrides)
        sweep(base, a.weights, a.trainers.split(","), [int(e) for e in a.epochs.split(",")],
              [int(s) for s in a.seeds.split(",")], a.workdir, a.al_lr)
        return 0
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
