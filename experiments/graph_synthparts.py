"""Explanatory graph on synthparts: location instability of graph nodes vs raw filters and 3-shot part
localization vs a raw-filter baseline, for the convnet (tiny preset) and ResNet-20, fixed and faithful modes.

    python -m experiments.graph_synthparts [--runs convnet,convnet-faithful,resnet20] [--workdir runs/graph_sp]
        [--set key=value ...]

Each run is ``jinterp.methods.graph.program.run`` with a preset (backbones are trained once per arch into
``<workdir>/<arch>/backbone`` and shared by the fixed/faithful runs); a Markdown table of the results is printed and
written to ``<workdir>/table.md``.

    python -m experiments.graph_synthparts --preset articulated --seeds 0 1 2 [--workdir runs/graph_articulated]

re-measures the ``convnet`` run (tiny preset) on ``synthparts:preset=articulated`` once per seed (backbone, graph
initialization and image sampling all follow the seed), each beside its sanity baselines, and re-learns the graph on
the same architecture with re-initialized weights (``randomize_backbone``); prints the experiments/README.md tables
(mean ± std over seeds, ddof 0) and writes them to ``<workdir>/table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from experiments.seeds import cell, count, survives
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


def seeds_table(runs: list[tuple[dict, dict]]) -> str:
    """Tables of the ``--seeds`` runs: ``runs`` = [(trained results, randomized results)] per seed."""
    ms = [t["metrics"] for t, _ in runs]
    rs = [r["metrics"] for _, r in runs]
    out = ["| units (instability, lower is better) | method | centre | own mean | random | beats all? "
           "| randomized network | survives randomization? |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for layer in ms[0]["instability_baselines"]:
        for kind in ("nodes", "filters"):
            for variant in ("graph", "icnn"):
                b = [m["instability_baselines"][layer][f"{kind}_{variant}"] for m in ms]
                rb = [m["instability_baselines"][layer][f"{kind}_{variant}"]["method"] for m in rs]
                col = {k: [x[k] for x in b] for k in ("method", "centre", "mean_position", "random")}
                name = ("nodes" if kind == "nodes" else "raw filters") + (", ICNN" if variant == "icnn" else ", graph")
                out.append(f"| `{layer}` {name} code | {cell(col['method'])} | {cell(col['centre'])} | "
                           f"{cell(col['mean_position'])} | {cell(col['random'])} | "
                           f"{count([x['beats_baselines'] for x in b])} | {cell(rb)} | "
                           f"{survives(col['method'], rb, lower_is_better=True)} |")
    lb = [m["localization_baselines"] for m in ms]
    rl = [m["localization_baselines"]["method"] for m in rs]
    col = {k: [x[k] for x in lb] for k in ("method", "image_blind", "centre", "random", "filters")}
    out += ["", "| 3-shot localization (normalized distance, lower is better) | nodes | raw filters | image-blind "
            "predictor | centre | random | beats all? | randomized network | survives randomization? |",
            "|---|---:|---:|---:|---:|---:|---|---:|---|",
            f"| nodes, both layers | {cell(col['method'])} | {cell(col['filters'])} | {cell(col['image_blind'])} | "
            f"{cell(col['centre'])} | {cell(col['random'])} | {count([x['beats_baselines'] for x in lb])} | "
            f"{cell(rl)} | {survives(col['method'], rl, lower_is_better=True)} |"]
    acc = [t.get("backbone_test_accuracy") for t, _ in runs]
    out += ["", "seeds: " + ", ".join(str(t["config"]["seed"]) for t, _ in runs)
            + "; learn s: " + ", ".join(f"{t['times']['learn_s']:.0f}" for t, _ in runs)
            + ("; backbone test accuracy: " + ", ".join(f"{a:.3f}" for a in acc) if all(acc) else "")]
    return "\n".join(out)


def run_seeds(preset: str, seeds: list[int], root: Path, overrides: list[str]) -> str:
    """The tiny convnet run on ``synthparts:preset=<preset>`` per seed, then its randomized twin (same backbone
    weights re-initialized, ``randomize_backbone``): the experiments/README.md multi-seed table."""
    runs = []
    for seed in seeds:
        cfg = apply_overrides(dataclasses.replace(GraphConfig.tiny(), data=f"synthparts:preset={preset}", seed=seed),
                              overrides)
        wd = root / f"seed_{seed}"
        trained = run(cfg, wd, progress=True)
        weights = cfg.weights or str(wd / "backbone" / "params.npz")
        trained["backbone_test_accuracy"] = _backbone_accuracy(wd)
        randomized = run(dataclasses.replace(cfg, weights=weights, randomize_backbone=True),
                         root / f"seed_{seed}_randomized", progress=True)
        runs.append((trained, randomized))
    return seeds_table(runs)


def _backbone_accuracy(wd: Path):
    """The trained backbone's test accuracy from its training record, when it was trained here."""
    f = wd / "backbone" / "final_metrics.json"
    return float(json.loads(f.read_text())["test_accuracy"]) if f.exists() else None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.graph_synthparts")
    ap.add_argument("--runs", default="convnet,convnet-faithful,resnet20")
    ap.add_argument("--workdir", default="runs/graph_synthparts")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--preset", default="", help="synthparts preset for the multi-seed convnet runs (articulated)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the multi-seed runs (0 1 2)")
    args = ap.parse_args(argv)
    if args.preset or args.seeds:
        root = Path(args.workdir if args.workdir != ap.get_default("workdir")
                    else f"runs/graph_{args.preset or 'rigid'}")
        md = run_seeds(args.preset or "rigid", args.seeds or [0, 1, 2], root, args.overrides)
        root.mkdir(parents=True, exist_ok=True)
        (root / "table.md").write_text(md + "\n")
        print(md)
        return
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
