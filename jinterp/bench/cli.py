"""``jinterp bench``: the JAX vs PyTorch benchmarks from the command line (what ``make bench`` runs).

Light to import (``jinterp --help`` builds its parser from :func:`add_arguments`); :func:`run` imports the harness,
JAX and PyTorch. The common options every ``jinterp`` command takes (``--config``, ``--data``...) are ignored here:
each pipeline module fixes its own full-size and ``--quick`` shapes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jinterp.bench import PIPELINES


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The bench options (shared by ``python -m jinterp.bench`` and ``jinterp bench``)."""
    ap.add_argument("--quick", action="store_true", help="CI-sized cases; results under results/tmp/")
    ap.add_argument("--only", default="", help=f"comma-separated pipelines out of {', '.join(PIPELINES)}")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 7; quick 3)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the batch/input-size curves")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the device-count check, the conv micro-benchmark and synthparts throughput")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no case after this many seconds; the rest are recorded as skipped "
                         "(default 420 on a GPU, none on the CPU)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: experiments/bench/results/ in a source checkout, else "
                         "./bench-results/; --quick writes under its tmp/)")


def run(args: argparse.Namespace) -> int:
    from jinterp.bench.__main__ import run as run_benchmarks

    run_benchmarks(args)
    return 0
