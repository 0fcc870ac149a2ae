"""Multi-seed helpers shared by the ``experiments/<method>_synthparts.py`` drivers (``--preset articulated --seeds
0 1 2``): mean ± std over seeds (ddof 0, as every multi-seed table in experiments/README.md) and the table cells."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([float(x) for x in values], np.float64)
    return float(v.mean()), float(v.std(ddof=0))


def cell(values: Sequence[float], digits: int = 3) -> str:
    """``0.060 ± 0.003`` over seeds; a single value prints without the spread, NaN or None (undefined) as ``-``."""
    vals = [float("nan") if x is None else float(x) for x in values]
    if not vals or any(math.isnan(x) for x in vals):
        return "-"
    m, s = mean_std(vals)
    return f"{m:.{digits}f}" if len(vals) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def count(flags: Sequence[bool], word: str = "yes") -> str:
    """``yes, 3/3`` / ``no, 0/3`` / ``1/3``: in how many seeds a comparison held."""
    k, n = sum(bool(f) for f in flags), len(flags)
    return f"{word}, {k}/{n}" if k == n else (f"no, {k}/{n}" if k == 0 else f"{k}/{n}")


def survives(trained: Sequence[float], randomized: Sequence[float], *, lower_is_better: bool) -> str:
    """``jinterp.metrics.baselines.randomization_verdict`` on the seed means, with the seeds' spread (the larger of
    the two stds) as the margin: "**survives**" (a warning: the trained network is not better than re-initialized
    weights by more than that) or "no (depends on training)"."""
    from jinterp.metrics.baselines import randomization_verdict

    if any(x is None or math.isnan(float(x)) for x in [*trained, *randomized]):
        return "undefined"
    (mt, st), (mr, sr) = mean_std(trained), mean_std(randomized)
    v = randomization_verdict("", mt, mr, lower_is_better=lower_is_better, margin=max(st, sr))
    return "**survives**" if v["survives_randomization"] else "no (depends on training)"
