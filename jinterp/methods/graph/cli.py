"""``jinterp graph``: learn an explanatory graph (nodes, edges, records) and evaluate it on part landmarks.

    jinterp graph --config tiny --workdir runs/graph
    jinterp graph --config tiny --arch resnet20 --workdir runs/graph_r20        # the ResNet-20 preset
    jinterp graph --config paper --weights vgg16_cat.npz --data synthparts:size=224 --layers conv5_2,conv5_3
    jinterp graph --config tiny --set faithful=true --set iterations=5

Writes ``<workdir>/graph.npz`` (per layer: coord, sigma, parents, prob_record, pos_record, phi),
``<workdir>/results.json`` (instability of nodes vs raw filters, few-shot part localization) and
``<workdir>/figures/graph_*.png``. Imports stay light until ``run``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("graph options")
    g.add_argument("--layers", default=None, metavar="A,B,...",
                   help="graph layers bottom to top, e.g. conv4_2,conv4_3,conv5_2,conv5_3 (vgg16) or bn3,bn4 "
                        "(convnet); per-layer settings (density, top_n, top_m) are cut/padded from the preset's")
    g.add_argument("--arch", default=None,
                   help="backbone (same as --set arch=...); 'resnet20' with --config tiny picks the ResNet-20 preset")
    g.add_argument("--faithful", action="store_true", help="reproduce the released code's quirks (--set faithful=true)")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def _fit(values: tuple, n: int) -> tuple:
    """Per-layer tuple resized to n layers: keep the top (last) entries, pad at the bottom with the first."""
    values = tuple(values)
    if len(values) >= n:
        return values[len(values) - n:]
    return (values[0],) * (n - len(values)) + values


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from jinterp.core import config as cfglib
    from jinterp.core.run import explicit, load_config
    from jinterp.methods.graph.config import GraphConfig
    from jinterp.methods.graph.program import RESULTS_FILE, summary
    from jinterp.methods.graph.program import run as run_program

    arch = getattr(args, "arch", None) if explicit(args, "arch") else None
    if arch == "resnet20" and args.config == "tiny":
        cfg = GraphConfig.resnet20()
    else:
        cfg = load_config(GraphConfig, args.config, method="graph")
    if arch:
        cfg = dataclasses.replace(cfg, arch=arch)
    layers = getattr(args, "layers", None) if explicit(args, "layers") else None
    if layers:
        names = tuple(x.strip() for x in layers.split(",") if x.strip())
        n = len(names)
        top_n = _fit(cfg.top_n[:-1], n - 1) + (0,) if n > 1 else (0,)
        top_m = _fit(cfg.top_m[:-1], n - 1) + (0,) if n > 1 else (0,)
        cfg = dataclasses.replace(cfg, layers=names, density=_fit(cfg.density, n), top_n=top_n, top_m=top_m,
                                  strides=(), centers=())
    sets = [(name, f"{name}={getattr(args, name)}") for name in ("data", "weights", "model")
            if getattr(args, name, None)]
    if getattr(args, "faithful", False):
        sets.append(("faithful", "faithful=true"))
    cfg = cfglib.apply_overrides(cfg, [item for option, item in sets if explicit(args, option)]
                                 + list(getattr(args, "overrides", []) or []))
    res = run_program(cfg, args.workdir, progress=not getattr(args, "quiet", False),
                      restart=getattr(args, "restart", False))
    print(summary(res) + f"; results: {args.workdir}/{RESULTS_FILE}")
    return 0
