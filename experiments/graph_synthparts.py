"""Explanatory graph on synthparts: location instability of graph nodes vs raw filters and 3-shot part
localization vs a raw-filter baseline, for the convnet (tiny preset) and ResNet-20, fixed and faithful modes.

    python -m experiments.graph_synthparts [--runs convnet,convnet-faithful,resnet20] [--workdir runs/graph_sp]
        [--set key=value ...]

Each run is ``jinterp.methods.graph.program.run`` with a preset (backbones are trained once per arch into
``<workdir>/<arch>/backbone`` and shared by the fixed/faithful runs); a Markdown table of the results is printed and
written to ``<workdir>/table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from jinterp.core.config import apply_overrides
from jinterp.methods.graph.config import GraphConfig
from jinterp.methods.graph.program import run

RUNS = {
    "convnet": lambda: GraphConfig.tiny(),
    "convnet-faithful": lambda: dataclasses.replace(GraphConfig.tiny(), faithful=True),
    "resnet20": lambda: GraphConfig.resnet20(),
    "resnet20-faithful": lambda: dataclasses.replace(GraphConfig.resnet20(), faithful=True),
}


def table(rows: list[tuple[str, dict]]) -> str:
    head = ("| run | layers (nodes) | instability graph-code: nodes / filters | ICNN-code: nodes / filters | "
            "3-shot normalized distance: nodes / filters | learn s | total s |\n|---|---|---|---|---|---|---|")
    out = [head]
    for name, r in rows:
        m = r.get("metrics", {})
        layers = ", ".join(f"{ly['name']} {ly['map'][0]}x{ly['map'][1]}x{ly['map'][2]} ({ly['nodes']})"
                           for ly in r["layers"])
        out.append(f"| {name} | {layers} | {m.get('instability_graph_nodes', float('nan')):.4f} / "
                   f"{m.get('instability_graph_filters', float('nan')):.4f} | "
                   f"{m.get('instability_icnn_nodes', float('nan')):.4f} / "
                   f"{m.get('instability_icnn_filters', float('nan')):.4f} | "
                   f"{m.get('fewshot_normalized_distance_nodes', float('nan')):.4f} / "
                   f"{m.get('fewshot_normalized_distance_filters', float('nan')):.4f} | "
                   f"{r['times']['learn_s']:.0f} | {r['times']['total_s']:.0f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.graph_synthparts")
    ap.add_argument("--runs", default="convnet,convnet-faithful,resnet20")
    ap.add_argument("--workdir", default="runs/graph_synthparts")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    root = Path(args.workdir)
    rows = []
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        cfg = apply_overrides(RUNS[name](), args.overrides)
        wd = root / name
        shared = root / cfg.arch / "backbone"
        if not cfg.weights:
            if (shared / "params.npz").exists() and not (wd / "backbone" / "params.npz").exists():
                (wd / "backbone").mkdir(parents=True, exist_ok=True)
                shutil.copy(shared / "params.npz", wd / "backbone" / "params.npz")
        res = run(cfg, wd, progress=True)
        if not (shared / "params.npz").exists() and (wd / "backbone" / "params.npz").exists():
            shared.mkdir(parents=True, exist_ok=True)
            shutil.copy(wd / "backbone" / "params.npz", shared / "params.npz")
        rows.append((name, res))
    md = table(rows)
    (root / "table.md").write_text(md + "\n")
    (root / "summary.json").write_text(json.dumps({n: r.get("metrics") for n, r in rows}, indent=2, default=float))
    print(md)


if __name__ == "__main__":
    main()
