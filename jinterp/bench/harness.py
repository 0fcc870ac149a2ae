"""The one benchmark harness: JAX vs PyTorch on the same work, agreement first, then alternating timed runs.

Every pipeline module in this folder exposes ``cases(quick: bool) -> list[Case]`` (and optionally
``scaling_cases(quick)`` for the batch-size / input-size curves); :func:`run_cases` times them and
:func:`write_results` writes ``results/<device>.json`` plus a Markdown table (``results/<device>.md``) that the
README includes.

Method, per case:

1. ``check()`` runs both frameworks on the same inputs and weights and returns the max abs difference of their
   outputs; a case whose difference exceeds ``atol`` is reported as disagreeing and is not timed (a fast wrong
   answer is not a result). A check may measure its tolerance instead (a dict with ``atol``, e.g. the reference's
   own change under a float32 rounding of its inputs); the row then records it, never below the case's ``atol``.
2. The first JAX call is timed alone: compile + one run (``first_call_s``); then ``warmup`` calls of each.
3. ``repeats`` rounds, each timing one JAX call then one PyTorch call (alternating, so both see the same load on
   a shared machine), with ``jax.block_until_ready`` / ``torch.cuda.synchronize`` before each clock stops.
4. Medians, min and max per framework; ``speedup`` = PyTorch median / JAX median (> 1: JAX is faster).
5. Where a case offers ``jax_lowered``, XLA's cost analysis gives the step's FLOPs, reported as achieved FLOP/s
   and as a fraction of this machine's measured float32 matmul peak (:func:`matmul_peak`), the roofline column.

Precision: float32 on both sides. On GPUs, :func:`configure_precision` sets ``jax_default_matmul_precision`` to
``"highest"`` and turns PyTorch's TF32 off, so the agreement check compares like with like; bf16 rows, where a
module adds them, say so in ``params``. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads: on a shared 2-core
machine OpenMP threads spinning at barriers made PyTorch 5-20x slower whenever another process ran, which would
flatter JAX. ``OPENBLAS_NUM_THREADS=1`` likewise keeps jaxlib's LAPACK from oversubscribing the cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# jaxlib's bundled OpenBLAS (LAPACK calls such as UIBE's QR) starts its own thread pool, which fought XLA's and
# PyTorch's threads for the cores: UIBE's step took 1.7x longer with it than single-threaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# On a GPU both frameworks share the card: JAX's default preallocation (75 %) would leave PyTorch too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jinterp.errors import JinterpError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]  # the source checkout, when run from one


def _results_dir() -> Path:
    """The checkout's ``experiments/bench/results`` (the committed tables); from an installed package, where no
    checkout is around, ``./bench-results`` in the working directory."""
    committed = REPO / "experiments" / "bench" / "results"
    return committed if committed.parent.is_dir() else Path.cwd() / "bench-results"


RESULTS = _results_dir()


@dataclasses.dataclass
class Case:
    """One unit of work done by both frameworks.

    ``jax_fn`` / ``torch_fn``: zero-argument callables doing the work once (e.g. one jitted train step on a fixed
    batch, state kept in the closure) and returning their outputs. ``check``: runs both on identical inputs and
    returns the max abs difference of the outputs, or a dict with ``max_abs_diff`` and, where the tolerance is
    measured rather than fixed, ``atol`` (see :func:`time_case`) plus any diagnostics for the row.
    ``jax_lowered``: optional, returns ``jitted.lower(*args)`` of the JAX work for XLA's cost analysis.
    ``items``: how many examples one call processes (for items/s). ``repeats`` / ``warmup``: this case's own
    counts, overriding the run's (a paper-scale row whose one call takes minutes runs e.g. 1 warm-up + 2 repeats
    while the millisecond rows keep 7). ``extra``: optional, called once after timing; its dict is merged into the
    row (e.g. memory figures).
    """

    pipeline: str
    params: dict
    jax_fn: Callable[[], Any]
    torch_fn: Callable[[], Any]
    check: Callable[[], float | dict]
    atol: float = 1e-4
    jax_lowered: Callable[[], Any] | None = None
    note: str = ""
    items: int | None = None
    repeats: int | None = None
    warmup: int | None = None
    extra: Callable[[], dict] | None = None


class BenchUnavailable(JinterpError):
    """A pipeline's benchmark cannot run here (PyTorch missing, or a reference that lives in the source checkout)."""


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise BenchUnavailable("the benchmarks compare against PyTorch, which is not installed: "
                               "pip install 'jinterp[torch]'") from e


def load_by_path(path: Path, name: str):
    """A Python file outside any package (e.g. ``tests/backbones/torch_reference.py``: test folders are not packages)
    as a module, loaded once under ``name``; the benchmarks share the tests' PyTorch references this way. Raises
    :class:`BenchUnavailable` where the file is absent (an installed package has no ``tests/``)."""
    import importlib.util
    import sys

    if name not in sys.modules and not Path(path).is_file():
        raise BenchUnavailable(f"this benchmark needs {Path(path).name} from jinterp's source checkout "
                               f"(not installed with the package); run it from a clone: make bench")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def configure_precision() -> None:
    """float32 everywhere: full-precision matmuls in JAX (matters on GPU/TPU) and TF32 off in PyTorch."""
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        import torch
    except ImportError:
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def on_gpu() -> bool:
    """True when JAX's default backend is a GPU (the GPU profile of ``python -m jinterp.bench``)."""
    return jax.default_backend() == "gpu"


def torch_device() -> str:
    """The device every PyTorch twin puts its models, parameters, inputs and constants on: ``"cuda"`` when PyTorch
    sees a GPU *and* JAX's default backend is a GPU (both frameworks on the same kind of device), else ``"cpu"``.
    Pipeline modules call it as ``harness.torch_device()`` so a test can substitute another device."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if on_gpu() and torch.cuda.is_available() else "cpu"


def results_name() -> str:
    """The stem of the combined results files: ``gpu`` on a GPU (``gpu.json``; the card is in ``machine``), else
    :func:`device_name` (``cpu``)."""
    return "gpu" if on_gpu() else device_name()


def device_name() -> str:
    """``cpu``, or the accelerator kind made file-name safe (``gpu-nvidia-h100-80gb-hbm3``...)."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return "cpu"
    kind = re.sub(r"[^a-z0-9]+", "-", str(getattr(d, "device_kind", d.platform)).lower()).strip("-")
    return f"{d.platform}-{kind}"


def _torch_sync() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _block(out: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(out)
    if any(isinstance(x, jax.Array) for x in leaves):
        jax.block_until_ready(out)
    return out


def _timed(fn: Callable[[], Any], torch_side: bool) -> float:
    t0 = time.perf_counter()
    out = fn()
    if torch_side:
        _torch_sync()
    else:
        _block(out)
    return time.perf_counter() - t0


def _stats(ts: Sequence[float]) -> dict:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times_s": list(ts)}


# An oneDNN convolution custom call in optimized HLO: result shape, target, its operands' shapes, its attributes.
_ONEDNN_CALL = re.compile(r"= f32\[([\d,]*)\]\S* custom-call\([^)]*\), "
                          r"custom_call_target=\"jinterp_onednn_conv_(\w+)\", "
                          r"operand_layout_constraints=\{f32\[([\d,]*)\]\S*, f32\[([\d,]*)\]\S*\}.*?"
                          r"backend_config=\{([^}]*)\}")


def _valid_taps(size: int, out: int, k: int, stride: int, pad_lo: int, dilation: int) -> int:
    """Pairs (output position, kernel tap) along one axis whose input position lies inside the map (not padding)."""
    o = np.arange(out)[:, None] * stride - pad_lo + np.arange(k)[None, :] * dilation
    return int(np.sum((o >= 0) & (o < size)))


def onednn_conv_flops(hlo_text: str) -> float:
    """FLOPs of the oneDNN convolution custom calls in an optimized HLO module, which XLA's cost analysis counts as
    0. Forward, backward-data and backward-weights each cost 2 multiply-adds' worth per (output-side element, kernel
    tap over real input, input channel of its group), the count XLA's cost analysis gives its own convolutions
    (padding taps are not counted). Like XLA's own count, a call inside a loop body is counted once."""
    total = 0.0
    for result, kind, first, second, config in _ONEDNN_CALL.findall(hlo_text):
        dims = {name: [int(d) for d in s.split(",") if d] for name, s in
                (("result", result), ("first", first), ("second", second))}
        x, y, kernel = {"fwd": ("first", "result", "second"), "bwd_data": ("result", "first", "second"),
                        "bwd_weights": ("first", "second", "result")}[kind]
        attr = {k: int(v) for k, v in re.findall(r"(\w+) = (-?\d+) : i64", config)}
        h, w = dims[x][-3:-1]
        ho, wo = dims[y][-3:-1]
        kh, kw, cin_per_group = dims[kernel][-4:-1]
        taps = (_valid_taps(h, ho, kh, attr["sh"], attr["pt"], attr["dh"])
                * _valid_taps(w, wo, kw, attr["sw"], attr["pl"], attr["dw"]))
        total += 2.0 * math.prod(dims[y]) / (ho * wo) * taps * cin_per_group
    return total


def flops_of(case: Case) -> float | None:
    """FLOPs of one JAX call: XLA's cost analysis plus :func:`onednn_conv_flops` for the convolutions it cannot see
    (None when the case offers no lowering or nothing is counted)."""
    if case.jax_lowered is None:
        return None
    compiled = case.jax_lowered().compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per computation
        analysis = analysis[0] if analysis else {}
    flops = max(float((analysis or {}).get("flops") or 0.0), 0.0) + onednn_conv_flops(compiled.as_text())
    return flops if flops > 0 else None


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """This machine's float32 matmul rate (FLOP/s), best of ``repeats``, for JAX and (if present) PyTorch: the
    roofline's compute ceiling. Best, not median: the ceiling is what the hardware can do."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    _block(mm(a))
    best = min(_timed(lambda: mm(a), False) for _ in range(repeats))
    out = {"n": n, "jax_flop_per_s": 2 * n**3 / best}
    try:
        import torch
    except ImportError:
        return out
    t = torch.randn(n, n, device=torch_device())
    t @ t
    best = min(_timed(lambda: t @ t, True) for _ in range(repeats))
    out["torch_flop_per_s"] = 2 * n**3 / best
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB; a high-water mark over everything it has run)."""
    import resource
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # macOS reports bytes, Linux KiB


def time_case(case: Case, *, repeats: int = 7, warmup: int = 2, peak: float | None = None) -> dict:
    """Checks agreement, then times ``case`` (see the module docstring); returns one JSON-ready row. The case's
    own ``repeats`` / ``warmup``, where set, override the arguments."""
    repeats = case.repeats if case.repeats is not None else repeats
    warmup = case.warmup if case.warmup is not None else warmup
    if repeats < 1 or warmup < 0:
        raise ValueError(f"{case.pipeline}: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    row: dict[str, Any] = {"pipeline": case.pipeline, "params": dict(case.params), "note": case.note,
                           "atol": case.atol, "repeats": repeats, "warmup": warmup}
    t0 = time.perf_counter()
    _block(case.jax_fn())
    row["first_call_s"] = time.perf_counter() - t0  # compile + one run
    checked = case.check()
    atol = case.atol
    if isinstance(checked, dict):  # a measured tolerance: never looser than the case's own atol
        checked = dict(checked)
        diff = float(checked.pop("max_abs_diff"))
        atol = max(case.atol, float(checked.pop("atol", case.atol)))
        row["atol"] = atol
        row["check"] = checked
    else:
        diff = float(checked)
    row["max_abs_diff"] = diff
    row["agree"] = bool(np.isfinite(diff) and diff <= atol)
    if not row["agree"]:
        print(f"  {case.pipeline} {case.params}: DISAGREES (max abs diff {diff:.3g} > atol {atol:g}); "
              "not timed", flush=True)
        return row
    for _ in range(warmup):
        _timed(case.jax_fn, False)
        _timed(case.torch_fn, True)
    tj, tt = [], []
    for _ in range(repeats):
        tj.append(_timed(case.jax_fn, False))
        tt.append(_timed(case.torch_fn, True))
    row["jax"], row["torch"] = _stats(tj), _stats(tt)
    row["speedup"] = row["torch"]["median_s"] / row["jax"]["median_s"]
    if case.items:
        row["items"] = case.items
        row["jax_items_per_s"] = case.items / row["jax"]["median_s"]
        row["torch_items_per_s"] = case.items / row["torch"]["median_s"]
    try:
        flops = flops_of(case)
    except Exception as e:  # cost analysis is a diagnostic; never lose the timing over it
        flops, row["flops_error"] = None, f"{type(e).__name__}: {e}"
    if flops:
        row["flops"] = flops
        row["jax_flop_per_s"] = flops / row["jax"]["median_s"]
        if peak:
            row["fraction_of_peak"] = row["jax_flop_per_s"] / peak
    if case.extra is not None:
        try:
            row.update(case.extra())
        except Exception as e:  # a diagnostic, like the cost analysis
            row["extra_error"] = f"{type(e).__name__}: {e}"
    print(f"  {case.pipeline} {case.params}: JAX {row['jax']['median_s'] * 1e3:.1f} ms, PyTorch "
          f"{row['torch']['median_s'] * 1e3:.1f} ms, speedup {row['speedup']:.2f}x, diff {diff:.1e}", flush=True)
    return row


def run_cases(cases: Sequence[Case], *, repeats: int = 7, warmup: int = 2, peak: float | None = None,
              deadline: float | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """:func:`time_case` for each case, never raising: a case that fails becomes a row with ``error``, and once
    ``time.monotonic()`` passes ``deadline`` the remaining cases become rows with ``skipped: "deadline"``.
    ``on_row(row)`` is called after each row (the caller rewrites its results file: progressive output)."""
    rows = []
    for c in cases:
        if past(deadline):
            row = stub_row(c.pipeline, c.params, skipped="deadline")
        else:
            try:
                row = time_case(c, repeats=repeats, warmup=warmup, peak=peak)
            except Exception as e:  # one broken case must not cost the rest of a run on a borrowed GPU
                row = stub_row(c.pipeline, c.params, error=f"{type(e).__name__}: {e}")
                print(f"  {c.pipeline} {c.params}: ERROR {row['error']}", flush=True)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def stub_row(pipeline: str, params: dict, *, error: str | None = None, skipped: str | None = None) -> dict:
    """A row for a case that was not timed: ``error`` (what it raised) or ``skipped`` (why it did not run)."""
    row: dict[str, Any] = {"pipeline": pipeline, "params": dict(params), "agree": False}
    if error is not None:
        row["error"] = error[:500]
    if skipped is not None:
        row["skipped"] = skipped
    return row


def machine() -> dict:
    info = {"device": device_name(), "jax_backend": jax.default_backend(), "jax_devices": len(jax.devices()),
            "device_kind": str(getattr(jax.devices()[0], "device_kind", "")), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jinterp_fastconv": os.environ.get("JINTERP_FASTCONV", "1"),
            "matmul_precision": str(jax.config.jax_default_matmul_precision)}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_cuda=torch.cuda.is_available(), torch_device=torch_device())
        if info["torch_device"] == "cuda":
            info["torch_device_name"] = torch.cuda.get_device_name()
    except ImportError:
        info["torch"] = None
    return info


def _fmt_params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def markdown(rows: Sequence[dict]) -> str:
    """The table: one row per case; times are medians in ms with [min-max]; speedup > 1 means JAX is faster."""
    lines = ["| pipeline | setting | agree (max abs diff) | JAX first call (s) | JAX ms [min-max] | "
             "PyTorch ms [min-max] | speedup JAX/PyTorch | JAX GFLOP/s (% of matmul peak) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "max_abs_diff" not in r:  # not run: an error or a skip (deadline)
            why = f"error: {r['error']}" if "error" in r else f"skipped: {r.get('skipped', '?')}"
            lines.append(f"| {r['pipeline']} | {_fmt_params(r['params'])} | {why.replace('|', '/')} | – | – | – | – "
                         "| – |")
            continue
        agree = f"{'yes' if r['agree'] else '**NO**'} ({r['max_abs_diff']:.1e})"
        if not r["agree"]:
            lines.append(f"| {r['pipeline']} | {_fmt_params(r['params'])} | {agree} | {r['first_call_s']:.1f} "
                         "| – | – | – | – |")
            continue
        j, t = r["jax"], r["torch"]
        roof = "–"
        if r.get("jax_flop_per_s"):
            roof = f"{r['jax_flop_per_s'] / 1e9:.1f}"
            if r.get("fraction_of_peak"):
                roof += f" ({100 * r['fraction_of_peak']:.0f}%)"
        lines.append(
            f"| {r['pipeline']} | {_fmt_params(r['params'])} | {agree} | {r['first_call_s']:.1f} | "
            f"{_ms(j['median_s'])} [{_ms(j['min_s'])}-{_ms(j['max_s'])}] | "
            f"{_ms(t['median_s'])} [{_ms(t['min_s'])}-{_ms(t['max_s'])}] | {r['speedup']:.2f}x | {roof} |")
    return "\n".join(lines)


def write_results(rows: Sequence[dict], out_dir: Path, *, name: str | None = None, extra: dict | None = None,
                  quick: bool = False) -> tuple[Path, Path]:
    """Writes ``<out_dir>/<name or device>.json`` and ``.md``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or results_name()
    table = markdown(rows)
    payload = {"machine": machine(), "quick": quick, "results": list(rows), "markdown": table, **(extra or {})}
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    mpath.write_text(table + "\n")
    return jpath, mpath


def main_for(module_cases: Callable[[bool], list[Case]], argv: Sequence[str] | None, name: str) -> list[dict]:
    """``python -m jinterp.bench.<name> [--quick] [--repeats N]``: one module's cases through the harness,
    written to ``results/<name>_<device>.json`` (``results/tmp/`` with --quick)."""
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m jinterp.bench.{name}")
    ap.add_argument("--quick", action="store_true", help="CI-sized cases, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    configure_precision()
    rows = run_cases(module_cases(args.quick), repeats=args.repeats or (3 if args.quick else 7),
                     warmup=1 if args.quick else 2)
    out = RESULTS / "tmp" if args.quick else RESULTS
    jpath, _ = write_results(rows, out, name=f"{name}_{device_name()}", quick=args.quick)
    print(markdown(rows))
    print(f"wrote {jpath}")
    return rows
