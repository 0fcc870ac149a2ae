"""synthparts generation throughput on the CPU (images per second).

    python -m jinterp.bench.synthparts [--n 4096] [--repeats 5] [--sizes 32 64 128]

Times :func:`jinterp.data.synthparts.generate` (all annotations included) after one warm-up call that builds
the cached noise bank, reports the median over repeats, and writes
``results/synthparts_cpu.json`` (:data:`jinterp.bench.harness.RESULTS`). The machine is shared and noisy: compare
numbers from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from jinterp.bench import harness
from jinterp.data import SynthPartsConfig, generate

RESULTS = harness.RESULTS


def bench(size: int, n: int, repeats: int, preset: str) -> dict:
    cfg = getattr(SynthPartsConfig, preset)(size=size)
    generate(64, config=cfg)  # warm-up: noise bank, lookup tables
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(n, seed=r, config=cfg)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"size": size, "preset": preset, "n": n, "repeats": repeats, "median_s": med,
            "images_per_s": n / med, "best_images_per_s": n / min(times), "times_s": times}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--presets", nargs="+", default=["default", "hard"])
    ap.add_argument("--out", type=Path, default=RESULTS / "synthparts_cpu.json")
    args = ap.parse_args(argv)
    rows = [bench(s, args.n if s <= 64 else max(256, args.n // 4), args.repeats, p)
            for p in args.presets for s in args.sizes]
    result = {
        "benchmark": "synthparts.generate",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "results": rows,
    }
    for r in rows:
        print(f"synthparts {r['preset']:>7} {r['size']:>3}x{r['size']:<3}: {r['images_per_s']:8.0f} images/s "
              f"(median of {r['repeats']}, best {r['best_images_per_s']:.0f}, n={r['n']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
