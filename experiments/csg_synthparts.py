"""Class-specific gates vs standard training: synthparts ConvNet and CIFAR-10 ResNet-20 (thin: calls the program).

    python -m experiments.csg_synthparts --setting tiny   [--workdir runs/csg_tiny]
    python -m experiments.csg_synthparts --setting long   # 3000 images, 31 epochs (9 gated)
    python -m experiments.csg_synthparts --setting cifar  # ../shared ResNet-20 + CIFAR-10 subset, released recipe

``cifar`` fine-tunes the shared akamaster ResNet-20 (converted from ``../shared/weights/resnet20-12fca82f.th``
into the workdir) on ``../shared/data/cifar10_subset.npz`` with the released two-optimizer recipe (standard Adam
1e-5 on layer2+layer3+linear, gated Adam 1e-3 on layer3+linear+G) for a CPU-sized number of epochs. Prints a
one-line summary per model and writes ``<workdir>/results.json`` (see ``jinterp.methods.csg.program``).

    python -m experiments.csg_synthparts --preset articulated --seeds 0 1 2 [--workdir runs/csg_articulated]

runs ``tiny`` on ``synthparts:preset=articulated`` over consecutive seeds (the program's own ``seeds``: one whole
CSG + standard run per seed, mean ± std with ddof 0), then the same with ``randomize_backbone`` (the trained models'
backbone re-initialized before evaluation), and prints the experiments/README.md table (also ``<workdir>/table.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from experiments.seeds import cell, count, survives
from jinterp.core.config import apply_overrides
from jinterp.methods.csg import CSGConfig, PathOptim
from jinterp.methods.csg.program import run

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"

LONG = ["train_size=3000", "test_size=1000", "eval_size=1000", "epochs=31", "warmup_epochs=4", "gate_lr_mult=10",
        "std_optim.milestones=20", "adv_size=256", "pgd_steps=10", "n_top_channel=20"]


def config(setting: str, workdir: Path) -> CSGConfig:
    if setting == "tiny":
        return CSGConfig.tiny()
    if setting == "long":
        return apply_overrides(CSGConfig.tiny(), LONG)
    if setting == "cifar":
        weights = SHARED / "weights" / "resnet20-12fca82f.th"
        npz = SHARED / "data" / "cifar10_subset.npz"
        if not weights.exists() or not npz.exists():
            sys.exit(f"needs {weights} and {npz} (the shared real data); not found")
        from jinterp.backbones import torch_import

        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / "resnet20_akamaster.npz"
        if not out.exists():
            variables = torch_import.from_torch("resnet20", str(weights), image_shape=(32, 32, 3))
            torch_import.save_variables(out, variables, {"arch": "resnet20", "num_classes": 10,
                                                         "source": str(weights.name)})
        cfg = CSGConfig.paper()
        return dataclasses.replace(
            cfg, arch="resnet20", data=f"cifar10:{npz}", weights=str(out), pretrain=False, image_size=32,
            epochs=16, warmup_epochs=1, gate_lr_mult=5.0, crop_pad=4, eval_size=846, adv_size=256,
            n_top_channel=30, std_optim=PathOptim(lr=1e-5, milestones=(60, 90, 120), train_stages=2),
            csg_optim=PathOptim(lr=1e-3, milestones=(60, 90, 120), train_stages=1))
    raise SystemExit(f"unknown setting {setting!r}")


def _metrics(m: dict) -> dict[str, float]:
    """The compared numbers of one model's results (NaN where the model has none, e.g. the standard gate AUC)."""
    out = {"accuracy": m["accuracy"], "mis": m["mis"]}
    for k in ("cam", "gradmap", "activmap"):
        out[f"{k}_iou"] = (m.get("localization") or {}).get(k, {}).get("iou", float("nan"))
    for att in ("fgsm", "pgd"):
        a = (m.get("adversarial") or {}).get(att, {})
        out[f"{att}_auc_gate"] = a.get("auc_gate", float("nan"))
        out[f"{att}_auc_empirical"] = a.get("auc_empirical", float("nan"))
    return out


def _higher(a: float | None, b: float | None) -> bool:
    """a > b, False when either is undefined (an AUC without successful attacks is None)."""
    return a is not None and b is not None and float(a) > float(b)


ROWS = [("test accuracy", "accuracy"), ("MIS (higher: more class-specific)", "mis"), ("CAM IoU", "cam_iou"),
        ("GradMap IoU", "gradmap_iou"), ("ActivMap IoU", "activmap_iou")]


def seeds_table(trained: list[dict], randomized: list[dict], seeds: list[int]) -> str:
    """Table of per-seed results (``seed_<s>/results.json`` of the trained and the randomized runs)."""
    csg = [_metrics(r["models"]["csg"]) for r in trained]
    std = [_metrics(r["models"]["standard"]) for r in trained]
    rcsg = [_metrics(r["models"]["csg"]) for r in randomized]
    out = ["| number (higher is better) | CSG | standard | CSG beats standard? (per seed) | CSG, randomized network "
           "| survives randomization? |", "|---|---:|---:|---|---:|---|"]
    for label, key in ROWS:
        a, b, rr = [x[key] for x in csg], [x[key] for x in std], [x[key] for x in rcsg]
        rand = "-" if key == "accuracy" else survives(a, rr, lower_is_better=False)
        out.append(f"| {label} | {cell(a)} | {cell(b)} | {count([_higher(x, y) for x, y in zip(a, b, strict=True)])} | "
                   f"{cell(rr)} | {rand} |")
    for att in ("fgsm", "pgd"):
        a = [x[f"{att}_auc_gate"] for x in csg]
        b = [x[f"{att}_auc_empirical"] for x in std]
        c = [x[f"{att}_auc_empirical"] for x in csg]
        rr = [x[f"{att}_auc_gate"] for x in rcsg]
        out.append(f"| {att.upper()} detector AUC: CSG gate / standard empirical profile (CSG empirical {cell(c)}) | "
                   f"{cell(a)} | {cell(b)} | {count([_higher(x, y) for x, y in zip(a, b, strict=True)])} | "
                   f"{cell(rr)} | {survives(a, rr, lower_is_better=False)} |")
    out += ["", "seeds: " + ", ".join(map(str, seeds)) + "; test accuracy of the randomized network: "
            + cell([x["accuracy"] for x in rcsg]) + "; wall s per seed (trained, randomized): " + ", ".join(
                f"{t['times']['total_s']:.0f}/{r['times']['total_s']:.0f}" for t, r in zip(trained, randomized,
                                                                                          strict=True))]
    return "\n".join(out)


def run_seeds(preset: str, seeds: list[int], root: Path, overrides: list[str]) -> str:
    """``tiny`` on ``synthparts:preset=<preset>`` over ``seeds`` (consecutive: the program's ``seeds`` field), then
    the randomized twin; returns the table."""
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit(f"--seeds must be consecutive (the program runs seed, seed+1, ...), got {seeds}")
    cfg = apply_overrides(dataclasses.replace(CSGConfig.tiny(), data=f"synthparts:preset={preset}", seed=seeds[0],
                                              seeds=len(seeds)), overrides)
    per = {}
    for name, c in (("trained", cfg), ("randomized", dataclasses.replace(cfg, randomize_backbone=True))):
        wd = root / name
        res = run(c, wd, progress=False)
        files = res.get("per_seed_results") or [str(wd / "results.json")]
        per[name] = [json.loads(Path(f).read_text()) for f in files]
        for v in (res.get("verdicts") or {}).values():
            print(name, v)
    return seeds_table(per["trained"], per["randomized"], seeds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=("tiny", "long", "cifar"), default="tiny")
    p.add_argument("--workdir", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--preset", default="", help="synthparts preset for the multi-seed tiny runs (articulated)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="consecutive seeds of the multi-seed runs")
    args = p.parse_args(argv)
    if args.preset or args.seeds:
        root = Path(args.workdir or f"runs/csg_{args.preset or 'rigid'}")
        md = run_seeds(args.preset or "rigid", args.seeds or [0, 1, 2], root, args.overrides)
        root.mkdir(parents=True, exist_ok=True)
        (root / "table.md").write_text(md + "\n")
        print(md)
        return 0
    workdir = Path(args.workdir or f"runs/csg_{args.setting}")
    cfg = apply_overrides(config(args.setting, workdir), args.overrides)
    res = run(cfg, workdir, progress=False)
    for name, m in res["models"].items():
        summary = {k: m[k] for k in ("accuracy", "best_test_accuracy", "mis", "density") if k in m}
        if "localization" in m:
            summary.update({f"{k}_iou": m["localization"][k]["iou"] for k in ("cam", "gradmap", "activmap")
                            if k in m["localization"]})
            summary.update({f"{k}_ap": m["localization"][k]["ap"] for k in ("cam", "gradmap", "activmap")
                            if k in m["localization"]})
        for att in ("fgsm", "pgd"):
            summary.update({f"{att}_{k}": v for k, v in m["adversarial"].get(att, {}).items()
                            if k.startswith(("auc", "success"))})
        if "label_leak" in m:
            summary.update(m["label_leak"])
        print(name, json.dumps(summary))
    print("issue6", json.dumps(res["issue6_observation"]), "times", json.dumps(res["times"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
