"""ClaDec on synthparts with the small ConvNet (jinterp's built-in data; no download).

    python -m experiments.cladec_synthparts --config tiny   [--workdir runs/cladec_synthparts_tiny]
    python -m experiments.cladec_synthparts --config paper  [--set epochs=20 ...]

``tiny`` is :meth:`ClaDecConfig.tiny` (the demo setting: 32 px, 1536 training images, ConvNet 16-32-64-64 trained
for 120 steps, layer ``relu3``, α ∈ {0, 0.01, 0.1}, about a minute of CPU). ``paper`` applies the official
ClaDec recipe to this data: batch 128, Adam 3e-4 / wd 1e-5 for 64 epochs with the official decay, decoder width
64, α ∈ {0, 0.001, 0.01, 0.1}, a ConvNet trained with the backbone's ``paper`` recipe shortened to 30 epochs,
layers ``relu3`` (8x8), ``relu4`` (4x4) and ``avgpool`` (the pooled 1x1 code), retrain protocol 10 epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from jinterp.core.config import OptimConfig, TrainBackboneConfig, apply_overrides
from jinterp.methods.cladec.config import ClaDecConfig


def paper() -> ClaDecConfig:
    backbone = TrainBackboneConfig(
        arch="convnet", batch_size=128, epochs=30.0, augment="flip",
        optim=OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine"),
        log_every=50, eval_every=0, ckpt_every=500, keep=2)
    return dataclasses.replace(ClaDecConfig.paper(), arch="convnet", data="synthparts", image_size=32,
                               train_size=8000, test_size=1000, layers=("relu3", "relu4", "avgpool"),
                               backbone=backbone)


def main(argv: list[str] | None = None) -> dict:
    from experiments.cladec_fashion_mnist import summary_table

    ap = argparse.ArgumentParser(prog="python -m experiments.cladec_synthparts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("paper", "tiny"), default="tiny")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    cfg = apply_overrides(paper() if args.config == "paper" else ClaDecConfig.tiny(), args.overrides)

    from jinterp.methods.cladec.program import run

    res = run(cfg, Path(args.workdir or f"runs/cladec_synthparts_{args.config}"), progress=not args.quiet)
    print(f"classifier test accuracy {res['backbone']['test_accuracy']:.4f}; "
          f"wall {res['wall_times_s']['total_s']:.0f} s")
    print(summary_table(res))
    return res


if __name__ == "__main__":
    main()
