"""``jinterp csg``: train class-specific gates (+ a standard baseline) and evaluate both.

    jinterp csg --config tiny --workdir runs/csg
    jinterp csg --config paper --set arch=resnet20 --data cifar10:PATH --weights resnet20.npz --set pretrain=false
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default=None, help="backbone (same as --set arch=...)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jinterp.core.run import config_from_args
    from jinterp.methods.csg.config import CSGConfig
    from jinterp.methods.csg.program import run as run_program

    sets = [("data", f"data={args.data}") if getattr(args, "data", None) and args.data != "synthparts" else None,
            ("arch", f"arch={args.arch}") if getattr(args, "arch", None) else None,
            ("weights", f"weights={args.weights}") if getattr(args, "weights", None) else None,
            ("model", f"model={args.model}") if getattr(args, "model", None) else None]
    cfg = config_from_args(CSGConfig, args, method="csg", sets=[x for x in sets if x])
    res = run_program(cfg, args.workdir, progress=not getattr(args, "quiet", False),
                      restart=getattr(args, "restart", False))
    parts = []
    for name, m in res["models"].items():
        s = f"{name}: acc {m['accuracy']:.3f} MIS {m['mis']:.4f}"
        if "density" in m:
            s += f" density {m['density']:.3f}"
        if "localization" in m and "cam" in m["localization"]:
            s += f" CAM IoU {m['localization']['cam']['iou']:.3f}"
        if "pgd" in m.get("adversarial", {}):
            aucs = {k: v for k, v in m["adversarial"]["pgd"].items() if k.startswith("auc_") and v is not None}
            s += " PGD " + " ".join(f"{k}={v:.3f}" for k, v in aucs.items())
        parts.append(s)
    print("; ".join(parts) + f" ({res['times']['total_s']:.0f} s); results: {args.workdir}/results.json")
    from jinterp.report.randomization import cli_lines

    for line in cli_lines(res, list((res.get("verdicts") or {}).values())):
        print(line)
    return 0
