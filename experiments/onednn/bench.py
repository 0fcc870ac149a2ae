"""oneDNN-via-FFI convolutions vs jinterp's current CPU path vs XLA's convolution vs PyTorch, in one process.

Run: ``python -m experiments.onednn.bench [--quick] [--only SUBSTR] [--no-steps] [--out PATH]``.

Per-shape rows are the regular (non-transposed) convolutions of :func:`jinterp.bench.conv.cases`; each row times
forward and forward+backward (dx and dW) of four implementations called round-robin (medians):
``onednn`` (:func:`jinterp.nn._onednn.conv2d`), ``jinterp`` (``jinterp.nn.ops.conv2d`` as it is),
``lax`` (``lax.conv_general_dilated``) and ``torch`` (PyTorch NCHW, oneDNN inside); ``jinterp`` is
``jinterp.nn.ops.conv2d`` traced with ``JINTERP_ONEDNN=0``, i.e. the path before oneDNN was wired in (im2col or
XLA's convolution with the unfused kernel gradient). The ResNet-20 train step
(:func:`jinterp.bench.conv._resnet20_step`, SGD, batch 128) is compiled once as jinterp runs it now (its convs
dispatched to oneDNN) and once with ``JINTERP_ONEDNN=0``, alternating with PyTorch. Exactness is checked before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from contextlib import nullcontext as _nothing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.bench import conv as bconv
from jinterp.nn import _onednn, ops


def _onednn_conv(x, w, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (ph, pw), (dh, dw) = ops._pair(stride), ops._pair(padding), ops._pair(dilation)
    return _onednn.conv2d(x, w, (sh, sw), ((ph, ph), (pw, pw)), (dh, dw), groups)


@contextmanager
def _without_onednn():
    """While tracing: ``ops.conv2d`` takes its previous CPU paths (``JINTERP_ONEDNN=0``)."""
    old = os.environ.get("JINTERP_ONEDNN")
    os.environ["JINTERP_ONEDNN"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JINTERP_ONEDNN")
        else:
            os.environ["JINTERP_ONEDNN"] = old


def _impl_fns(case, impl, x, w, g):
    conv = {"onednn": _onednn_conv, "jinterp": ops.conv2d,
            "lax": lambda x, w, s, p: bconv._lax_conv(x, w, s, p)}[impl]
    f = jax.jit(lambda x, w: conv(x, w, case.stride, case.padding))
    def fwd_bwd(x, w, g):  # returns the forward too: otherwise XLA drops it as dead code and f+b times only b
        y, vjp = jax.vjp(lambda a, b: conv(a, b, case.stride, case.padding), x, w)
        return y, vjp(g)

    fb = jax.jit(fwd_bwd)
    t0 = time.perf_counter()
    with _without_onednn() if impl == "jinterp" else _nothing():
        fc, fbc = f.lower(x, w).compile(), fb.lower(x, w, g).compile()
    comp = time.perf_counter() - t0
    return fc, fbc, comp


def bench_case(case, quick: bool) -> dict:
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((case.n, case.hw, case.hw, case.cin), np.float32)
    wn = (rng.standard_normal((case.k, case.k, case.cin, case.cout), np.float32)
          / np.sqrt(case.k * case.k * case.cin)).astype(np.float32)
    o = bconv._out_hw(case)
    gn = rng.standard_normal((case.n, o, o, case.cout), np.float32)
    x, w, g = jnp.asarray(xn), jnp.asarray(wn), jnp.asarray(gn)
    fwd, fb, comp, outs = {}, {}, {}, {}
    for impl in ("onednn", "jinterp", "lax"):
        fc, fbc, comp[impl] = _impl_fns(case, impl, x, w, g)
        outs[impl] = (fc(x, w), *fbc(x, w, g))
        fwd[impl] = (lambda fc=fc: jax.block_until_ready(fc(x, w)))
        fb[impl] = (lambda fbc=fbc: jax.block_until_ready(fbc(x, w, g)))
    rel = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
              for a, b in zip(outs["onednn"], outs["lax"], strict=True))
    fwd["torch"], fb["torch"] = bconv._torch_fns(case, xn, wn, gn)
    reps = bconv._reps_for(bconv._flops(case), quick)
    t_f = bconv._median_alternating(fwd, reps, warmup=2)
    t_fb = bconv._median_alternating(fb, reps, warmup=2)
    return {"name": case.name, "n": case.n, "fwd_s": t_f, "fwd_bwd_s": t_fb, "compile_s": comp,
            "max_rel_err_vs_lax": rel, "reps": reps}


def bench_resnet20(quick: bool) -> dict:
    batch, reps = (32, 3) if quick else (128, 7)
    j_one, torch_step, comp_one = bconv._resnet20_step(batch)  # ops.conv2d dispatches to oneDNN
    with _without_onednn():
        j_cur, _, comp_cur = bconv._resnet20_step(batch)
    t = bconv._median_alternating({"onednn": j_one, "jinterp": j_cur, "torch": torch_step}, reps, warmup=2)
    return {"name": "ResNet-20 step (SGD)", "batch": batch, "s": t, "compile_s": {"onednn": comp_one,
                                                                                    "jinterp": comp_cur}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="")
    p.add_argument("--no-steps", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    assert _onednn.available(), "oneDNN convolutions could not be built (see the warning)"
    cost = dict(_onednn.build_cost)
    rows = []
    print("| shape | N | f+b oneDNN ms | f+b jinterp ms | f+b lax ms | f+b torch ms | oneDNN/torch | jinterp/torch "
          "| fwd oneDNN ms | fwd torch ms | max rel err |", flush=True)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for case in bconv.cases(a.quick):
        if case.transposed or (a.only and a.only not in case.name):
            continue
        r = bench_case(case, a.quick)
        rows.append(r)
        fb, f = r["fwd_bwd_s"], r["fwd_s"]
        print(f"| {r['name']} | {r['n']} | {fb['onednn'] * 1e3:.1f} | {fb['jinterp'] * 1e3:.1f} | "
              f"{fb['lax'] * 1e3:.1f} | {fb['torch'] * 1e3:.1f} | **{fb['onednn'] / fb['torch']:.2f}** | "
              f"{fb['jinterp'] / fb['torch']:.2f} | {f['onednn'] * 1e3:.1f} | {f['torch'] * 1e3:.1f} | "
              f"{r['max_rel_err_vs_lax']:.1e} |", flush=True)
    steps = []
    if not a.no_steps:
        s = bench_resnet20(a.quick)
        steps.append(s)
        t = s["s"]
        print(f"\nResNet-20 step batch {s['batch']}: oneDNN {t['onednn'] * 1e3:.0f} ms, jinterp "
              f"{t['jinterp'] * 1e3:.0f} ms, torch {t['torch'] * 1e3:.0f} ms (oneDNN/torch "
              f"{t['onednn'] / t['torch']:.2f}, jinterp/torch {t['jinterp'] / t['torch']:.2f}); compile "
              f"{s['compile_s']}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"build": cost, "shapes": rows, "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
