"""Class-specific gates vs standard training: synthparts ConvNet and CIFAR-10 ResNet-20 (thin: calls the program).

    python -m experiments.csg_synthparts --setting tiny   [--workdir runs/csg_tiny]
    python -m experiments.csg_synthparts --setting long   # 3000 images, 31 epochs (9 gated)
    python -m experiments.csg_synthparts --setting cifar  # ../shared ResNet-20 + CIFAR-10 subset, released recipe

``cifar`` fine-tunes the shared akamaster ResNet-20 (converted from ``../shared/weights/resnet20-12fca82f.th``
into the workdir) on ``../shared/data/cifar10_subset.npz`` with the released two-optimizer recipe (standard Adam
1e-5 on layer2+layer3+linear, gated Adam 1e-3 on layer3+linear+G) for a CPU-sized number of epochs. Prints a
one-line summary per model and writes ``<workdir>/results.json`` (see ``jinterp.methods.csg.program``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=("tiny", "long", "cifar"), default="tiny")
    p.add_argument("--workdir", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
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
