"""``jinterp basis``: interpretable bases of one layer (natural units, random rotation, UIBE, IBD) dissected.

    jinterp basis --config tiny --workdir runs/basis
    jinterp basis --config tiny --layer relu3 --method uibe --method natural
    jinterp basis --config paper --data broden:PATH --arch resnet18 --layer layer4 --weights W.npz
    jinterp basis ... --category-rule netdissect      # NetDissect-Lite's IoU denominator (default: the paper's)
    jinterp basis --config tiny --uibe-trainer augmented_lagrangian --set uibe.lambda_inactive=5 --set uibe.epochs=30

Writes ``<workdir>/results.json`` (S¹/S², detectors, unique detectors per basis), ``<workdir>/bases.npz``
(directions, thresholds, labels) and ``<workdir>/figures/``. Imports stay light until ``run``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("basis options")
    g.add_argument("--layer", default=None, metavar="NAME",
                   help="layer to dissect, e.g. relu4 (convnet) or layer3 (resnet20). Default: the preset's")
    g.add_argument("--method", action="append", default=None, choices=("natural", "random", "uibe", "ibd"),
                   help="basis to extract and score (repeatable). Default: all four")
    g.add_argument("--arch", default=None, help="backbone architecture (same as --set arch=...)")
    g.add_argument("--category-rule", default=None, choices=("paper", "netdissect"),
                   help="IoU denominator: images carrying the concept's category (paper, default) or only those "
                        "where the unit's active region meets it (netdissect: NetDissect-Lite's rule)")
    g.add_argument("--uibe-trainer", default=None, choices=("weighted", "augmented_lagrangian"),
                   help="UIBE's trainer: the weighted loss sum (default) or the augmented Lagrangian, λ_s·L^s "
                        "subject to L^ma ≤ 0.8, L^mm ≤ 8 (and L^ic ≤ 0.1 with uibe.lambda_inactive > 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from jinterp.core.run import config_from_args
    from jinterp.methods.basis.config import BasisConfig
    from jinterp.methods.basis.program import run as run_program

    sets = [(name, f"{name}={getattr(args, name)}") for name in ("data", "weights", "model", "arch", "layer")
            if getattr(args, name, None)]
    if getattr(args, "category_rule", None):
        sets.append(("category-rule", f"category_rule={args.category_rule}"))  # explicit() matches --NAME
    if getattr(args, "uibe_trainer", None):
        sets.append(("uibe-trainer", f"uibe.trainer={args.uibe_trainer}"))
    if getattr(args, "method", None):
        sets.append(("method", "methods=" + ",".join(args.method)))
    cfg = config_from_args(BasisConfig, args, method="basis", sets=sets)
    res = run_program(cfg, args.workdir, progress=not getattr(args, "quiet", False),
                      restart=getattr(args, "restart", False))
    parts = [f"{k}: S1 {v['S1']:.2f} S2 {v['S2']:.2f} det {v['detectors']}/{v['directions']} "
             f"uniq {v['unique_detectors']}" for k, v in res["bases"].items()]
    print(f"basis {res['arch']} {res['layer']}: " + " | ".join(parts)
          + f" ({res['wall_times_s']['total_s']:.0f} s); results: {args.workdir}/results.json")
    from jinterp.report.randomization import cli_lines

    for line in cli_lines(res, list((res.get("verdicts") or {}).values())):
        print(line)
    return 0
