"""A PyTorch model converted generically (``jinterp.models.from_torch``) vs PyTorch, beside the built-in backbone of
the same network: forward (eval) and one SGD-momentum train step (BN in train mode).

    python -m jinterp.bench.converted [--quick] [--repeats 7]   (or the old path experiments.bench.converted)

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
from jinterp.bench.harness import Case, main_for

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


def main(argv=None):
    return main_for(cases, argv, "converted")


if __name__ == "__main__":
    main()
