"""A PyTorch model converted generically (``jinterp.models.from_torch``) vs PyTorch, beside the built-in backbone of
the same network: forward (eval) and one SGD-momentum train step (BN in train mode).

    python -m jinterp.bench.converted [--quick] [--repeats 7]
    python -m jinterp.bench.converted --vs-builtin [--quick] [--repeats 7]

``--vs-builtin`` times the converted model against the built-in one directly, alternating them call by call (so
both see the same load; the harness rows above alternate each with PyTorch, and two rows run minutes apart on a
shared machine), and prints the converted/built-in time ratio of medians and of minima.

Finding (issue #18 item 6). An earlier run showed from_torch at 1899 vs 1311 ms (forward, batch 256) and 3460 vs
2905 ms (train step, batch 128). The cause was the measurement, not the converter: both models compile to the same
XLA program (forward and train gradient: identical instruction multisets, 19 convolutions through the same
``jinterp.nn`` fast paths, no extra transposes; only parameter names and source metadata differ), and the two rows
ran minutes apart on a 2-core machine at load average ~12. Alternated call by call (``--vs-builtin``, same load)
the converted/built-in ratio of medians (of minima) was, in three runs at load 7-12: forward 1.02 (0.95), 1.07
(1.05), 0.93 (1.06); train step 1.03 (1.02), 1.08 (0.97), 1.01 (1.07) — equal within the machine's noise.
``tests/models/test_converted_lowering.py`` and ``test_pretrained_generic.py`` guard the equality.

The network is the akamaster CIFAR ResNet-20 as its own PyTorch code (``tests/backbones/torch_reference.py``:
option-A shortcuts through a lambda with slicing and ``F.pad``), randomized as in ``backbones.py``. Rows with
``model=from_torch`` run the traced-and-lowered graph; rows with ``model=built-in`` run ``jinterp.backbones``'
hand-written ResNet-20 with the same weights, so one run shows whether the generic path costs anything. The
cases are ``backbones.py``'s, built around the converted model (same batches, optimizer and agreement checks).
Not in ``make bench``'s pipeline list (``jinterp/bench/__main__.py``); run it on its own.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np

from jinterp import models
from jinterp.bench import backbones as bench_backbones
from jinterp.bench.harness import Case, _stats, _timed, configure_precision, main_for

ARCH = "resnet20"
FORWARD, FORWARD_QUICK = (256, 32), (32, 32)
STEP, STEP_QUICK = (128, 32), (16, 32)


def _converted_pair(arch: str, size: int, seed: int = 0):
    """``backbones._pair`` with the built-in module swapped for the generic conversion of the same PyTorch module."""
    _, _, tm, num_classes = _builtin_pair(arch, size, seed)
    example = np.zeros((1, 3, size, size), np.float32)
    model, variables = models.from_torch(tm.eval(), example)
    return model, variables, tm, num_classes


_builtin_pair = bench_backbones._pair


def _tagged(case: Case, model: str) -> Case:
    return dataclasses.replace(case, params={**case.params, "model": model})


def cases(quick: bool) -> list[Case]:
    (fb, fs), (sb, ss) = (FORWARD_QUICK, STEP_QUICK) if quick else (FORWARD, STEP)
    out = []
    for make, batch, size in ((bench_backbones.forward_case, fb, fs), (bench_backbones.train_step_case, sb, ss)):
        with mock.patch.object(bench_backbones, "_pair", _converted_pair):
            converted = make(ARCH, batch, size)
        out += [_tagged(converted, "from_torch"), _tagged(make(ARCH, batch, size), "built-in")]
    return out


def head_to_head(quick: bool, repeats: int) -> list[dict]:
    """Each JAX case of :func:`cases`, converted vs built-in, timed alternately (one call of each per round, in
    alternating order, after one untimed warm-up call of each). Returns one dict per pipeline with both timings
    and the ratios converted/built-in of the medians and of the minima (1.0 = same speed)."""
    all_cases = cases(quick)
    rows = []
    for converted, builtin in zip(all_cases[0::2], all_cases[1::2], strict=True):
        for fn in (converted.jax_fn, builtin.jax_fn):
            _timed(fn, False)  # compile + one run
        tc, tb = [], []
        for r in range(repeats):  # ABBA order: neither model always runs first in a round
            if r % 2:
                tb.append(_timed(builtin.jax_fn, False))
            tc.append(_timed(converted.jax_fn, False))
            if not r % 2:
                tb.append(_timed(builtin.jax_fn, False))
        sc, sb = _stats(tc), _stats(tb)
        row = {"pipeline": converted.pipeline, "params": {k: v for k, v in converted.params.items() if k != "model"},
               "from_torch": sc, "built-in": sb, "median_ratio": sc["median_s"] / sb["median_s"],
               "min_ratio": sc["min_s"] / sb["min_s"]}
        print(f"  {row['pipeline']} {row['params']}: from_torch {sc['median_s'] * 1e3:.1f} ms "
              f"[min {sc['min_s'] * 1e3:.1f}], built-in {sb['median_s'] * 1e3:.1f} ms [min {sb['min_s'] * 1e3:.1f}]"
              f", converted/built-in {row['median_ratio']:.2f} (medians), {row['min_ratio']:.2f} (minima)",
              flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--vs-builtin" in argv:
        import argparse

        ap = argparse.ArgumentParser(prog="python -m jinterp.bench.converted --vs-builtin")
        ap.add_argument("--vs-builtin", action="store_true")
        ap.add_argument("--quick", action="store_true")
        ap.add_argument("--repeats", type=int, default=None)
        args = ap.parse_args(argv)
        configure_precision()
        return head_to_head(args.quick, args.repeats or (3 if args.quick else 7))
    return main_for(cases, argv, "converted")


if __name__ == "__main__":
    main()
