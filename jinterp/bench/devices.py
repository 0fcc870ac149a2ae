"""Data-parallel scaling over simulated CPU devices: a correctness and overhead check, not a speedup.

    python -m jinterp.bench.devices [--quick]

For N in 1, 2, 4, 8, a fresh process (the device count is fixed when XLA starts) runs jinterp's own training
step (``jinterp.core.train.make_train_step`` with a ``data`` mesh: batch sharded, params replicated) on the
synthparts ConvNet with the same global batch and seed. On one CPU the N "devices" share the same cores, so
time per step measures the partitioning overhead; the losses after ``steps`` steps must agree across N (to
float32 reduction-order round-off), which is the check that the sharded program computes the same thing.
On a multi-accelerator host the same script measures real data-parallel scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COUNTS = (1, 2, 4, 8)


def _worker(n: int, batch: int, steps: int, size: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jinterp import backbones
    from jinterp.core import sharding, train
    from jinterp.core.config import OptimConfig

    assert len(jax.devices()) >= n, jax.devices()
    mesh = sharding.make_mesh(jax.devices()[:n])
    model = backbones.create("convnet", num_classes=6)
    variables = backbones.init(model, jax.random.key(0), (size, size, 3))
    tx, _ = train.make_optimizer(OptimConfig(), steps)
    loss_fn = train.make_classifier_loss(model, mean=(0.5,) * 3, std=(0.25,) * 3)
    state = sharding.replicate(train.create_train_state(variables, tx, jax.random.key(1)), mesh)
    step = train.make_train_step(loss_fn, tx, mesh=mesh)
    rng = np.random.default_rng(0)
    batches = [sharding.shard_batch({"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
                                     "label": rng.integers(0, 6, batch).astype(np.int32)}, mesh)
               for _ in range(steps)]
    t0 = time.perf_counter()
    state, m = step(state, batches[0])
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t0
    times, losses = [], [float(m["loss"])]
    for b in batches[1:]:
        t0 = time.perf_counter()
        state, m = step(state, b)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
        losses.append(float(m["loss"]))
    return {"devices": n, "batch": batch, "first_call_s": first, "median_step_s": statistics.median(times),
            "min_step_s": min(times), "max_step_s": max(times), "losses": losses,
            "param_checksum": float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(state.params)))}


def run(quick: bool = False) -> dict:
    batch, steps, size = (16, 4, 32) if quick else (64, 8, 64)
    rows = []
    for n in COUNTS:
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                          f" --xla_force_host_platform_device_count={n}").strip())
        code = (f"import json; from jinterp.bench.devices import _worker; "
                f"print('RESULT' + json.dumps(_worker({n}, {batch}, {steps}, {size})))")
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
        if r.returncode or not line:
            raise RuntimeError(f"device-scaling worker for {n} devices failed:\n{r.stderr[-2000:]}")
        rows.append(json.loads(line[0][len("RESULT"):]))
        print(f"  {n} device(s): {rows[-1]['median_step_s'] * 1e3:.1f} ms/step, final loss "
              f"{rows[-1]['losses'][-1]:.6f}", flush=True)
    ref = rows[0]
    for r in rows:
        r["max_loss_diff_vs_1"] = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"], strict=True))
        r["overhead_vs_1"] = r["median_step_s"] / ref["median_step_s"]
        r["agree"] = r["max_loss_diff_vs_1"] <= 1e-4
    return {"pipeline": "convnet.train_step.data_parallel", "image_size": size, "steps": steps, "rows": rows}


def markdown(result: dict) -> str:
    lines = ["| devices | global batch | ms/step (median) | overhead vs 1 | max loss diff vs 1 device | agree |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['devices']} | {r['batch']} | {r['median_step_s'] * 1e3:.1f} | "
                     f"{r['overhead_vs_1']:.2f}x | {r['max_loss_diff_vs_1']:.1e} | {'yes' if r['agree'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m jinterp.bench.devices")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.quick)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
