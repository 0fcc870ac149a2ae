"""ClaDec reproduction on Fashion-MNIST: the official setting (``JohnTailor/ClaDec`` ``runMe.trainOne``).

    python -m experiments.cladec_fashion_mnist --config tiny  [--workdir runs/cladec_fmnist_tiny]
    python -m experiments.cladec_fashion_mnist --config paper [--data PATH] [--set epochs=16 ...]

Setting (spec A.3-A.4): the VGG-11-like classifier (``vgg11_bn_cladec``: eight conv3x3-BN-ReLU blocks with
stride-2 downsampling, Dropout(0.5), Linear 512->10) trained with SGD 0.1 / momentum 0.9 / wd 1e-4, batch 128, no
augmentation, [0, 1] inputs; Fashion-MNIST upsampled 28 -> 32 with PyTorch's legacy nearest rule; decoders and
RefAE with Adam 3e-4 / wd 1e-5; lr x0.1 at the official epochs (64 epochs: after 29 and 58). Layers ``flat``
(HEAD's layInd -1, the 512-d pre-logit code) and ``conv4a`` (layInd -2, 512x2x2); α swept over 0, 0.001 (the
official default), 0.01, 0.1.

Data: ``--data`` is a Fashion-MNIST source for ``jinterp.data.load``: an .npz (default: the shared
``fashion_mnist_subset.npz``, the first 4443 official *test* images, split 80/20 into 3554 train / 889 test by
jinterp's deterministic single-split rule), an idx folder, or a prepared TFDS ``fashion_mnist``
(``tfds:fashion_mnist``). The paper used the full 60k/10k split.

``tiny`` keeps the architecture, optimizers, batch size and layers and shortens every schedule (classifier 8
epochs, decoders 8, retrain 3, the decay rule applied to those lengths), so it runs on a 2-core CPU.
Results go to ``<workdir>/results.json`` and ``figures/``; a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jinterp.core.config import apply_overrides
from jinterp.methods.cladec.config import ClaDecConfig, official_classifier

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
DEFAULT_DATA = SHARED / "data" / "fashion_mnist_subset.npz"


def paper(data: str) -> ClaDecConfig:
    return dataclasses.replace(ClaDecConfig.paper(), data=data, image_size=32)


def tiny(data: str) -> ClaDecConfig:
    return dataclasses.replace(paper(data), epochs=8, backbone=dataclasses.replace(official_classifier(8),
                                                                                   log_every=9),
                               retrain_epochs=3, log_every=9)


def summary_table(res: dict) -> str:
    lines = ["| layer | source | test MSE (per pixel) | SSE per image | frozen classifier acc | retrained acc "
             "(reconstructed test) | retrained acc (original test) |", "|---|---|---:|---:|---:|---:|---:|"]
    for layer, d in res["layers"].items():
        for name, s in d["sources"].items():
            mse = f"{s['mse']:.4f}" if "mse" in s else "–"
            sse = f"{s['sse_per_image']:.1f}" if "sse_per_image" in s else "–"
            r1 = f"{s['retrain_acc_reconstructed']:.3f}" if "retrain_acc_reconstructed" in s else "–"
            r2 = f"{s['retrain_acc_original']:.3f}" if "retrain_acc_original" in s else "–"
            lines.append(f"| {layer} | {name} | {mse} | {sse} | {s['frozen_accuracy']:.3f} | {r1} | {r2} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m experiments.cladec_fashion_mnist", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("paper", "tiny"), default="tiny")
    ap.add_argument("--data", default=None, help=f"Fashion-MNIST source (default fashion_mnist:{DEFAULT_DATA})")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    data = args.data or f"fashion_mnist:{DEFAULT_DATA.resolve()}"
    if args.data is None and not DEFAULT_DATA.exists():
        sys.exit(f"{DEFAULT_DATA} not found; pass --data fashion_mnist:PATH (or tfds:fashion_mnist)")
    if ":" not in data:
        data = f"fashion_mnist:{data}"
    cfg = apply_overrides(paper(data) if args.config == "paper" else tiny(data), args.overrides)
    workdir = Path(args.workdir or f"runs/cladec_fmnist_{args.config}")

    from jinterp.methods.cladec.program import run

    res = run(cfg, workdir, progress=not args.quiet)
    print(f"classifier test accuracy {res['backbone']['test_accuracy']:.4f}; train {res['train_size']} / test "
          f"{res['test_size']} images; wall {res['wall_times_s']['total_s']:.0f} s")
    print(summary_table(res))
    print(json.dumps(res["figures"], indent=1))
    return res


if __name__ == "__main__":
    main()
