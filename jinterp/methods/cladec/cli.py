"""``jinterp cladec``: decode a layer's activations with ClaDec, contrast with RefAE, sweep α.

    jinterp cladec --config tiny --workdir runs/cladec
    jinterp cladec --config paper --data fashion_mnist:../shared/data/fashion_mnist_subset.npz \\
        --layer flat --layer conv4a --alpha 0 --alpha 0.001

Writes ``<workdir>/results.json`` (metrics per layer and α), decoder params (``layers/<layer>/*.npz``) and
figures (``figures/grid_<layer>.png``, ``figures/tradeoff.png``). Imports stay light until ``run``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cladec options")
    g.add_argument("--layer", action="append", default=None, metavar="NAME",
                   help="layer to explain, by name (repeatable), e.g. flat, conv4a (vgg11_bn_cladec) or relu3 "
                        "(convnet); list names with jinterp.backbones.layer_names(arch). Default: the preset's")
    g.add_argument("--alpha", action="append", type=float, default=None, metavar="A",
                   help="α in [0, 1] of the loss (1-α)·MSE + α·CE (repeatable: one decoder per α, trained "
                        "together). Default: the preset's")
    g.add_argument("--arch", default=None, help="backbone architecture (same as --set arch=...)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from jinterp.core.run import config_from_args
    from jinterp.methods.cladec.config import ClaDecConfig
    from jinterp.methods.cladec.program import run as run_program

    sets = [("data", f"data={args.data}") if getattr(args, "data", None) else None,
            ("weights", f"weights={args.weights}") if getattr(args, "weights", None) else None,
            ("model", f"model={args.model}") if getattr(args, "model", None) else None,
            ("arch", f"arch={args.arch}") if getattr(args, "arch", None) else None,
            ("layer", "layers=" + ",".join(args.layer)) if getattr(args, "layer", None) else None,
            ("alpha", "alphas=" + ",".join(repr(float(a)) for a in args.alpha)) if getattr(args, "alpha", None)
            else None]
    cfg = config_from_args(ClaDecConfig, args, method="cladec", sets=[x for x in sets if x])
    res = run_program(cfg, args.workdir, progress=not getattr(args, "quiet", False),
                      restart=getattr(args, "restart", False))
    parts = []
    for layer, d in res["layers"].items():
        src = d["sources"]
        best = [f"α={a:g}: mse {src[f'cladec@{a:g}']['mse']:.4f} acc {src[f'cladec@{a:g}']['frozen_accuracy']:.3f}"
                for a in res["alphas"]]
        ref = (f"RefAE mse {src['refae']['mse']:.4f} acc {src['refae']['frozen_accuracy']:.3f}; "
               if "refae" in src else "")
        parts.append(f"{layer}: {ref}ClaDec " + ", ".join(best))
    print(f"cladec {res['arch']} (test acc {res['backbone']['test_accuracy']:.3f}): " + " | ".join(parts)
          + f" ({res['wall_times_s']['total_s']:.0f} s); results: {args.workdir}/results.json")
    from jinterp.report.randomization import cli_lines

    checks = [f"{layer}: {d['retrain_check']['text']}" for layer, d in res["layers"].items()
              if isinstance(d.get("retrain_check"), dict)]
    for line in cli_lines(res, checks):
        print(line)
    return 0
