"""``jinterp bench`` = ``python -m jinterp.bench [--quick] [--only NAME,...]`` (``make bench``): every pipeline,
one table.

Each pipeline module in this folder exposes ``cases(quick)`` (and optionally ``scaling_cases(quick)``); all go
through :mod:`jinterp.bench.harness` (agreement first, alternating timed runs, medians, min/max, compile time
apart, roofline against the measured matmul peak). Then the device-count check (:mod:`jinterp.bench.devices`),
the per-shape convolution micro-benchmark (:mod:`jinterp.bench.conv`) and the synthparts generator throughput.

Writes ``results/<device>.json`` and ``results/<device>.md`` (``cpu``; ``gpu`` on a GPU, see :func:`run`; one
scaling plot per pipeline next to them:
``results/<device>_scaling_<pipeline>.png``); on the CPU, full size, the README's benchmark section is refreshed
from the table. ``--quick`` runs CI-sized cases and writes under ``results/tmp/`` so the committed full-size
figures are never overwritten by a smoke run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from jinterp.bench import PIPELINES, harness
from jinterp.bench.cli import add_arguments

README = harness.REPO / "README.md"
MARK_BEGIN, MARK_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _module(name: str):
    try:
        return importlib.import_module(f"jinterp.bench.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"jinterp.bench.{name}":
            return None
        raise


def _varying(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Groups scaling rows by (pipeline, the one parameter that varies while the others are fixed)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not r.get("agree"):
            continue
        p = r["params"]
        for key in p:
            if isinstance(p[key], (int, float)):
                fixed = tuple((k, v) for k, v in p.items() if k != key)
                groups[(r["pipeline"], key, fixed)].append(r)
    out: dict[tuple[str, str], list[dict]] = {}
    for (pipeline, key, fixed), rs in groups.items():
        if len({r["params"][key] for r in rs}) > 1:
            label = ", ".join(f"{k}={v}" for k, v in fixed)
            out[(pipeline, f"{key} ({label})" if label else key)] = sorted(rs, key=lambda r: r["params"][key])
    return out


def plot_scaling(rows: list[dict], out_dir: Path, device: str) -> list[Path]:
    """One PNG per pipeline: median time per call vs each varied parameter, JAX and PyTorch, log-log."""
    from jinterp.report.figures import save
    from jinterp.report.figures._common import plt

    by_pipeline: dict[str, list] = defaultdict(list)
    for (pipeline, what), rs in _varying(rows).items():
        by_pipeline[pipeline].append((what, rs))
    paths = []
    for pipeline, series in by_pipeline.items():
        fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
        for ax, (what, rs) in zip(axes[0], series, strict=True):
            key = what.split(" ")[0]
            xs = [r["params"][key] for r in rs]
            ax.loglog(xs, [r["jax"]["median_s"] * 1e3 for r in rs], "o-", label="JAX")
            ax.loglog(xs, [r["torch"]["median_s"] * 1e3 for r in rs], "s--", label="PyTorch")
            ax.set_xlabel(what, fontsize=8)
            ax.set_ylabel("ms per call (median)")
            ax.legend(fontsize=8)
        fig.suptitle(f"{pipeline} on {device}", fontsize=10)
        paths.append(save(fig, out_dir / f"{device}_scaling_{re.sub(r'[^a-z0-9]+', '_', pipeline)}.png"))
    return paths


def update_readme(table: str, readme: Path = README) -> bool:
    """Replaces the text between the README's bench markers with ``table``; False when the markers are absent."""
    if not readme.is_file():  # an installed package: no checkout README to refresh
        return False
    text = readme.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        return False
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    readme.write_text(f"{head}{MARK_BEGIN}\n{table}\n{MARK_END}{tail}")
    return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m jinterp.bench", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(sys.argv[1:] if argv is None else argv), ap.error)


GPU_SKIPS = {
    "devices": "simulated devices are a CPU-only check (XLA host-platform device count)",
    "conv": "the convolution micro-benchmark compares XLA:CPU layouts and the oneDNN custom call (CPU only)",
    "synthparts": "the synthparts generator runs on the host CPU; its throughput is measured in the CPU profile",
    "readme": "the README table is the CPU table; a GPU run writes gpu.json / gpu.md only",
}


def run(args: argparse.Namespace, error=None) -> dict:
    """Runs the benchmarks for parsed ``args`` (see :func:`add_arguments`); ``error(msg)`` reports bad options.

    Every pipeline's cases first, then the scaling curves, then the extras. Never raises over one case: a case (or a
    pipeline's setup) that fails becomes a row with ``error``; once ``--deadline-s`` has passed (default 420 s on a
    GPU, none on the CPU) the remaining cases become rows with ``skipped: deadline``. The json and Markdown files
    are rewritten after every row, so a run cut short still leaves its results. On a GPU (JAX's default backend)
    the files are ``gpu.json`` / ``gpu.md``, bf16 rows join the float32 parity rows, and the CPU-only extras are
    skipped with the reason recorded (``extras_skipped``)."""
    t_start = time.monotonic()
    harness.require_torch()

    harness.configure_precision()
    device = harness.device_name()
    gpu = harness.on_gpu()
    out = args.out or (harness.RESULTS / "tmp" if args.quick else harness.RESULTS)
    repeats = args.repeats or (3 if args.quick else 5 if gpu else 7)
    warmup = 1 if args.quick or gpu else 2
    deadline_s = args.deadline_s if args.deadline_s is not None else (420.0 if gpu else None)
    deadline = t_start + deadline_s if deadline_s else None
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PIPELINES)
    unknown = sorted(set(names) - set(PIPELINES))
    if unknown:
        (error or _raise)(f"unknown pipeline(s) {unknown}; choose from {list(PIPELINES)}")

    peak = harness.matmul_peak(1024 if args.quick else 2048)
    print(f"matmul peak: JAX {peak['jax_flop_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    rows: list[dict] = []
    scaling: list[dict] = []
    skipped: list[str] = []
    unavailable: dict[str, str] = {}
    extra: dict = {"matmul_peak": peak, "skipped": skipped, "unavailable": unavailable, "scaling": scaling,
                   "torch_device": harness.torch_device(), "deadline_s": deadline_s, "repeats": repeats,
                   "warmup": warmup}
    sections: list[str] = []

    def save() -> tuple[Path, Path]:
        extra["elapsed_s"] = time.monotonic() - t_start
        jpath, mpath = harness.write_results(rows, out, extra=extra, quick=args.quick)
        tables = [harness.markdown(rows)]
        if scaling:
            tables.append("Scaling (time vs batch / input size):\n\n" + harness.markdown(scaling))
        mpath.write_text("\n\n".join(tables + sections) + "\n")
        return jpath, mpath

    def run_into(target: list[dict], build, label: str) -> None:
        """Builds a pipeline's cases with ``build()`` and times them into ``target``, saving after every row."""
        if harness.past(deadline):
            target.append(harness.stub_row(label, {}, skipped="deadline"))
            save()
            return
        try:
            cases = build()
        except harness.BenchUnavailable:
            raise
        except Exception as e:  # a pipeline whose setup fails is one error row, not a lost run
            target.append(harness.stub_row(label, {}, error=f"setup: {type(e).__name__}: {e}"))
            print(f"  {label}: setup ERROR {target[-1]['error']}", flush=True)
            save()
            return
        harness.run_cases(cases, repeats=repeats, warmup=warmup, peak=peak["jax_flop_per_s"], deadline=deadline,
                          on_row=lambda r: (target.append(r), save()))

    with_scaling = []
    for name in names:
        mod = _module(name)
        if mod is None or not hasattr(mod, "cases"):
            skipped.append(name)
            continue
        print(f"{name}:", flush=True)
        try:
            run_into(rows, lambda mod=mod: mod.cases(args.quick), name)
        except harness.BenchUnavailable as e:
            print(f"  skipped: {e}", flush=True)
            unavailable[name] = str(e)
            continue
        if not args.no_scaling and hasattr(mod, "scaling_cases"):
            with_scaling.append((name, mod))
    for name, mod in with_scaling:
        print(f"{name} scaling:", flush=True)
        run_into(scaling, lambda mod=mod: mod.scaling_cases(args.quick), f"{name} scaling")
    try:
        plots = plot_scaling(scaling, out, device) if scaling else []
    except Exception as e:  # e.g. no matplotlib on a borrowed GPU box: the numbers are in the json anyway
        plots, extra["scaling_plots_error"] = [], f"{type(e).__name__}: {e}"
    extra["scaling_plots"] = [p.name for p in plots]
    if gpu:
        extra["extras_skipped"] = dict(GPU_SKIPS)
    elif not args.no_extras:
        from jinterp.bench import devices

        extra["devices"] = devices.run(args.quick)
        sections.append("Simulated devices (correctness and overhead, one CPU):\n\n"
                        + devices.markdown(extra["devices"]))
    jpath, mpath = save()
    if not args.no_extras and not gpu:
        from jinterp.bench import conv, synthparts

        conv_args = ["--quick", "--no-steps", "--only", "r20"] if args.quick else ["--native"]
        conv.main(conv_args + ["--out", str(out / "conv_cpu.json")])
        synth_args = ["--n", "512", "--repeats", "2", "--sizes", "64", "--presets", "default"] if args.quick else []
        synthparts.main(synth_args + ["--out", str(out / "synthparts_cpu.json")])
    if skipped:
        print(f"no benchmark module yet for: {', '.join(skipped)}")
    for name, reason in unavailable.items():
        print(f"not run: {name}: {reason}")
    if not args.quick and device == "cpu" and not args.only and update_readme(mpath.read_text().strip()):
        print(f"updated the benchmark table in {README.name}")
    print(mpath.read_text())
    print(f"wrote {jpath} and {mpath} ({time.monotonic() - t_start:.0f} s)")
    return json.loads(jpath.read_text())


def _raise(message: str):
    raise harness.BenchUnavailable(message)


if __name__ == "__main__":
    main()
