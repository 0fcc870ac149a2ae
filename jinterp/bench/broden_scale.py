"""Dissection at Broden scale: peak memory and throughput of streaming a Broden-format set through a backbone.

For each N: writes synthparts images 0..N-1 at 224 px as a Broden folder in joinseg's layout
(:func:`jinterp.data.broden_writer.write_synthparts_broden`) into a temporary directory, then measures, in a fresh
child process, the dissection of that folder read with ``lazy=1``:

1. thresholds: images decoded per batch in :class:`~jinterp.data.BatchIterator`'s prefetch thread, features of
   ``--layer`` by :func:`jinterp.core.features.iter_features` (jitted), exact top-0.5 % quantiles
   (:func:`jinterp.metrics.dissection.quantile_thresholds`);
2. tally: the same stream again (one iterator over the whole set); concept labels
   (:func:`jinterp.data.broden_concepts`, every plane, merged names) are built ``--chunk`` images at a time by
   :func:`jinterp.metrics.dissection.tally_chunked` (what ``jinterp basis`` runs), which tallies each chunk on that
   chunk's batches of the stream; the tally's counters are sums over images, so the chunk tallies add up to the
   tally of the whole set;
3. IoU and unit labels.

Reported per N (JSON lines, and a table): peak RSS of the child (``ru_maxrss`` and a 0.1 s sampler of VmRSS),
images/s of each pass, CPU time / wall time of the streaming passes (> 1: decode overlaps compute on several cores).
``--prefetch`` sets how many batches the iterator decodes ahead in its thread (default 2); ``--prefetch 0`` decodes
each batch synchronously in the consuming thread (no overlap), the baseline the overlap is measured against; several
values (``--prefetch 2 0``) measure each N once per value, alternating, in one run.

    python -m jinterp.bench.broden_scale --n 1000 5000 20000 [--layer relu4] [--label-size 56] [--prefetch 2 0]

(``python -m experiments.bench.broden_scale`` is the old path, an alias.)

The backbone is a randomly initialized ``convnet`` (memory and speed do not depend on the weights), by default
with quarter widths (16, 32, 64, 64) so that 20,000 images fit a run on a shared 2-core machine. Labels are scored at
``--label-size`` (NetDissect-Lite scores at the segmentation size, 112 for 224-px Broden; 56 here by default halves
the tally's upsampling work on a 2-core machine; the memory bound does not depend on it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Samples this process's resident set every ``period`` seconds; ``peak`` in MiB."""

    def __init__(self, period: float = 0.1):
        super().__init__(daemon=True)
        self.period, self.peak, self._halt = period, 0.0, threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._halt.wait(self.period)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return max(self.peak, _rss_mb())


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _mark() -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB so far) of this process."""
    return time.perf_counter(), _cpu_s(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def streamed_dissection(ds, model, variables, layer: str, batch_size: int, chunk: int, label_size: int,
                        marks: list | None = None, prefetch: int = 2):
    """Thresholds, tally, IoU and unit labels of ``ds`` (a ``broden:`` Dataset, lazy or not) with nothing
    data-set-sized in memory: images stream through one prefetching BatchIterator per pass, concept labels are
    built ``chunk`` images at a time. Returns ``(iou_table (U, L), DissectionResult, Thresholds, first activation
    batch)``; appends :func:`_mark` at the start, after the thresholds pass and at the end to ``marks``.
    ``prefetch``: batches decoded ahead in the iterator's thread (0: decoded synchronously, no overlap)."""
    import itertools

    import numpy as np

    from jinterp.core.features import iter_features
    from jinterp.data import BatchIterator, broden_concepts
    from jinterp.metrics import dissection as dis

    marks = [] if marks is None else marks
    n = len(ds)

    def acts():
        it = BatchIterator(ds, batch_size, shuffle=False, num_epochs=1, prefetch=prefetch)
        # prefetch > 0: batches are decoded in the iterator's thread while the previous one is computed
        images = (np.asarray(b["image"])[np.asarray(b["mask"])] for b in it)
        for out in iter_features(model, variables, images, [layer], batch_size=batch_size):
            yield out[layer]

    marks.append(_mark())
    stream = acts()
    first = next(stream)
    h, w = first.shape[1:3]
    th = dis.quantile_thresholds(itertools.chain([first], stream), n * h * w)
    marks.append(_mark())
    # one ordered pass (one prefetch thread); the labels are built a chunk at a time beside it
    total, concepts = dis.tally_chunked(
        acts(), lambda start, stop: broden_concepts(ds.take(np.arange(start, stop)), size=(label_size, label_size)),
        n, th, batch_size, chunk=chunk, max_labels=32)
    table = dis.iou(total, concepts)
    result = dis.label_units(table, th.dead)
    marks.append(_mark())
    return table, result, th, first


def measure(root: str, arch: str, layer: str, batch_size: int, chunk: int, label_size: int,
            widths: tuple[int, ...] = (), prefetch: int = 2) -> dict:
    """Dissect the Broden folder ``root`` streamed with lazy=1 (run in a fresh process)."""
    sampler = RssSampler()
    sampler.start()
    import jax
    import numpy as np

    from jinterp import backbones
    from jinterp.data import load

    ds = load(f"broden:{root},lazy=1", "train")
    n = len(ds)
    model = backbones.create(arch, num_classes=10, **({"widths": widths} if widths else {}))
    variables = backbones.init(model, jax.random.key(0), ds.image_shape)
    rss_after_load = _rss_mb()
    marks = []
    table, result, _, first = streamed_dissection(ds, model, variables, layer, batch_size, chunk, label_size, marks,
                                                  prefetch=prefetch)
    (t0, c0, _), (t1, c1, peak_thresholds), (t2, c2, _) = marks
    h, w = first.shape[1:3]
    peak_sampled = sampler.stop()
    return dict(n=n, arch=arch, layer=layer, feature_hw=[int(h), int(w)], units=int(first.shape[-1]),
                batch_size=batch_size, chunk=chunk, label_size=label_size, prefetch=prefetch,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                peak_rss_sampled_mb=peak_sampled, rss_after_load_mb=rss_after_load,
                peak_rss_after_thresholds_mb=peak_thresholds,
                thresholds_s=t1 - t0, thresholds_img_s=n / (t1 - t0), thresholds_cpu_per_wall=(c1 - c0) / (t1 - t0),
                tally_s=t2 - t1, tally_img_s=n / (t2 - t1), tally_cpu_per_wall=(c2 - c1) / (t2 - t1),
                widths=list(widths), detectors=result.num_detectors, dead_units=int(np.sum(result.dead)),
                concepts=int(table.shape[1]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--arch", default="convnet")
    ap.add_argument("--layer", default="relu4")
    ap.add_argument("--widths", type=int, nargs="*", default=[16, 32, 64, 64],
                    help="convnet channel widths (the library default is 32 64 128 128; none: the arch default)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=512, help="images per concept-label chunk of the tally")
    ap.add_argument("--label-size", type=int, default=56)
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2],
                    help="batches decoded ahead in the iterator's thread; 0: synchronous decode (no overlap); "
                         "several values: each N is measured once per value, alternating")
    ap.add_argument("--workdir", default=None, help="where to write the Broden folders (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written folders")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child mode: dissect this folder
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.arch, args.layer, args.batch_size, args.chunk, args.label_size,
                                 tuple(args.widths or ()), args.prefetch[0])))
        return

    from jinterp.data.broden_writer import write_synthparts_broden

    work = Path(args.workdir or tempfile.mkdtemp(prefix="broden_scale_"))
    rows = []
    try:
        # one folder of max(N) images; each N dissects its first N (images 0..N-1 are the same whatever the total)
        root = work / "broden"
        index = root / "index.csv"
        if args.keep and index.exists() and len(index.read_text().splitlines()) > max(args.n):
            print(json.dumps({"reused": str(root)}), flush=True)  # a kept folder from an earlier run
        else:
            t = time.perf_counter()
            write_synthparts_broden(root, max(args.n), size=224)
            print(json.dumps({"written": max(args.n), "write_s": time.perf_counter() - t}), flush=True)
        if any(p < 0 for p in args.prefetch):
            raise SystemExit(f"--prefetch {args.prefetch}: batches decoded ahead must be >= 0")
        for n, prefetch in ((n, p) for n in sorted(args.n) for p in args.prefetch):
            cmd = [sys.executable, "-m", "jinterp.bench.broden_scale", "--measure", f"{root}:max_images={n}",
                   "--arch", args.arch, "--layer", args.layer, "--batch-size", str(args.batch_size),
                   "--chunk", str(args.chunk), "--label-size", str(args.label_size), "--prefetch", str(prefetch),
                   "--widths", *map(str, args.widths or [])]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode != 0:
                raise SystemExit(f"measurement for n={n} prefetch={prefetch} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| N | prefetch | peak RSS (MiB) | thresholds img/s | tally img/s | CPU/wall (thr, tally) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['prefetch']} | {r['peak_rss_mb']:.0f} | {r['thresholds_img_s']:.1f} | "
              f"{r['tally_img_s']:.1f} | "
              f"{r['thresholds_cpu_per_wall']:.2f}, {r['tally_cpu_per_wall']:.2f} |")


if __name__ == "__main__":
    main()
