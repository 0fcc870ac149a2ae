"""Backbone forward throughput, JAX vs PyTorch, on the CPU (images per second).

    python -m experiments.bench.backbones [--quick] [--repeats 7]

For each case the same random weights (a PyTorch reference module, randomized with realistic BN statistics, then
converted with :func:`jinterp.backbones.torch_import.from_torch`) and the same batch go through both frameworks,
in float32, eval mode: JAX ``jit(model.apply)`` returning the logits only (XLA drops the unused intermediates),
PyTorch ``model.eval()`` under ``torch.no_grad()``. The harness first checks the logits agree, then times the
two alternately (warm-up excluded; JAX compile time reported separately; ``block_until_ready`` before the clock
stops), and writes the medians to ``experiments/bench/results/backbones_cpu.json`` with a Markdown table.

The PyTorch modules are the ones the parity tests use (``tests/backbones/torch_reference.py``), so the
benchmark and the tests can never disagree about what the reference is. The machine is shared and noisy:
compare numbers from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import backbones
from jinterp.backbones import torch_import

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "backbones" / "torch_reference.py"

# (arch, batch, image size): full and --quick.
CASES = [("resnet20", 256, 32), ("vgg16", 16, 224)]
QUICK_CASES = [("resnet20", 32, 32), ("vgg16", 2, 64)]


def _reference():
    name = "jinterp_bench_torch_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REFERENCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(arch: str, batch: int, size: int, repeats: int, warmup: int = 2, seed: int = 0) -> dict:
    import torch

    tref = _reference()
    shape = (size, size, 3)
    rng = np.random.default_rng(seed)
    tm = tref.build(arch, backbones.spec(arch).num_classes)
    calib = torch.from_numpy(rng.standard_normal((8, 3, size, size)).astype(np.float32))
    tref.randomize(tm, seed, calib).eval()
    variables = torch_import.from_torch(arch, tm.state_dict(), image_shape=shape)
    model = backbones.create(arch)

    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    x_jax = jax.device_put(jnp.asarray(x))
    x_torch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    t0 = time.perf_counter()
    compiled = forward.lower(variables, x_jax).compile()
    compile_s = time.perf_counter() - t0

    def run_jax():
        return compiled(variables, x_jax).block_until_ready()

    def run_torch():
        with torch.no_grad():
            return tm(x_torch)

    max_abs_diff = float(np.max(np.abs(np.asarray(run_jax()) - run_torch().numpy())))
    for _ in range(warmup):
        run_jax()
        run_torch()
    t_jax, t_torch = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        t_jax.append(_timed(run_jax))
        t_torch.append(_timed(run_torch))
    med_jax, med_torch = statistics.median(t_jax), statistics.median(t_torch)
    return {
        "arch": arch, "batch": batch, "image_size": size, "repeats": repeats, "warmup": warmup,
        "max_abs_diff_logits": max_abs_diff, "jax_compile_s": compile_s,
        "jax_median_s": med_jax, "torch_median_s": med_torch,
        "jax_images_per_s": batch / med_jax, "torch_images_per_s": batch / med_torch,
        "jax_over_torch_speed": med_torch / med_jax,
        "jax_times_s": t_jax, "torch_times_s": t_torch,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | px | max abs diff | JAX compile (s) | JAX img/s | PyTorch img/s | JAX/PyTorch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['image_size']} | {r['max_abs_diff_logits']:.1e} | "
            f"{r['jax_compile_s']:.1f} | {r['jax_images_per_s']:.1f} | {r['torch_images_per_s']:.1f} | "
            f"{r['jax_over_torch_speed']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches and sizes, 3 repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per framework (default 7; quick 3)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("this benchmark needs PyTorch: pip install 'jinterp[torch]'")
    cases = QUICK_CASES if args.quick else CASES
    repeats = args.repeats or (3 if args.quick else 7)
    out = args.out or RESULTS / ("backbones_cpu_quick.json" if args.quick else "backbones_cpu.json")

    rows = []
    for arch, batch, size in cases:
        row = bench(arch, batch, size, repeats)
        rows.append(row)
        print(f"{arch} batch {batch} {size}px: JAX {row['jax_images_per_s']:.1f} img/s, PyTorch "
              f"{row['torch_images_per_s']:.1f} img/s, max abs diff {row['max_abs_diff_logits']:.1e}", flush=True)
    table = markdown(rows)
    result = {
        "benchmark": "backbones.forward",
        "precision": "float32 (XLA CPU and PyTorch CPU default precision: full fp32)",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
                    "jax_backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "jinterp_fastconv": os.environ.get("JINTERP_FASTCONV", "1")},
        "quick": args.quick,
        "results": rows,
        "markdown": table,
    }
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
