"""Input pipelines compared by measurement: jinterp's lazy records + prefetch thread vs the same records read from
an ArrayRecord file (by jinterp's BatchIterator, and by grain's DataLoader when grain is installed).

Writes synthparts images 0..N-1 at 224 px as a Broden folder in joinseg's layout
(:func:`jinterp.data.broden_writer.write_synthparts_broden`) and the same JPEG bytes, one record per image, into
one ArrayRecord file (``group_size:1``, random access). Then, in a fresh child process per measurement, one pass
over the N images in batches of ``--batch-size`` feeds the feature extraction of ``jinterp.bench.broden_scale``
(a quarter-width ``convnet`` up to ``relu4``, jitted, compiled before the clock starts):

* ``lazy``: ``broden:ROOT:lazy=1`` (:class:`~jinterp.data.lazy.LazyArray`, one JPEG file per image) through
  :class:`~jinterp.data.BatchIterator` with ``prefetch=2`` (decoded in its thread while the previous batch computes);
* ``array_record``: the ArrayRecord file read by ``array_record``'s ``ArrayRecordDataSource`` (what TFDS's
  ``data_source`` uses), a batch's records at once, JPEG-decoded with the same PIL call, through the same
  BatchIterator (``prefetch=2``);
* ``grain``: the ArrayRecord file through ``grain.python.DataLoader`` (``ArrayRecordDataSource``, an
  ``IndexSampler`` in order, the decode as a ``MapTransform``, ``Batch``) with ``--grain-workers`` decode
  processes (skipped with a note when grain cannot be imported; jinterp does not depend on it).

Reported per measurement (JSON lines and a table): images/s of the pass and CPU time / wall time of the pass
(this process plus its reaped children: grain's worker processes). Modes alternate, ``--reps`` rounds, in one run.

    python -m jinterp.bench.data_readers --n 2000 [--reps 2] [--modes lazy array_record grain]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("lazy", "array_record", "grain")
RECORDS = "images.array_record"


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def decode_jpeg(data: bytes):
    """uint8 ``(H, W, 3)`` from encoded image bytes (the PIL call :func:`jinterp.data.annotated.load_rgb` makes)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def write_records(root: Path) -> Path:
    """The JPEG bytes of the Broden folder ``root``'s images, in index.csv order, one record each."""
    import csv

    from array_record.python.array_record_module import ArrayRecordWriter

    with open(root / "index.csv", newline="") as f:
        names = [row["image"] for row in csv.DictReader(f)]
    path = root / RECORDS
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for name in names:
        writer.write((root / "images" / name).read_bytes())
    writer.close()
    return path


def _batches(mode: str, root: Path, n: int, batch_size: int, grain_workers: int):
    """Image batches ``(B, 224, 224, 3)`` uint8 of the first ``n`` images, the last one possibly shorter."""
    import numpy as np

    from jinterp.data import BatchIterator, Dataset, load
    from jinterp.data.lazy import LazyArray

    if mode in ("lazy", "array_record"):
        if mode == "lazy":
            ds = load(f"broden:{root}:lazy=1,max_images={n}", "train")
        else:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            src = ArrayRecordDataSource([str(root / RECORDS)])
            first = decode_jpeg(src[0])
            images = LazyArray(n, first.shape, np.uint8,
                               decode_batch=lambda idx: np.stack([decode_jpeg(r) for r in
                                                                  src.__getitems__([int(i) for i in idx])]))
            ds = Dataset(images=images, labels=np.zeros(n, np.int32), num_classes=1, class_names=("x",))
        it = BatchIterator(ds, batch_size, shuffle=False, num_epochs=1, prefetch=2)
        return (np.asarray(b["image"])[np.asarray(b["mask"])] for b in it)
    import grain.python as gp
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads absl flags (defaults are fine); outside absl.app they are unparsed
        flags.FLAGS.mark_as_parsed()
    class Decode(gp.MapTransform):  # record bytes -> image (grain pickles it for its worker processes)
        def map(self, record: bytes):
            return decode_jpeg(record)

    loader = gp.DataLoader(data_source=gp.ArrayRecordDataSource([str(root / RECORDS)]),
                           sampler=gp.IndexSampler(n, shard_options=gp.NoSharding(), shuffle=False, num_epochs=1),
                           operations=[Decode(), gp.Batch(batch_size)], worker_count=grain_workers)
    return (np.asarray(b) for b in loader)


def measure(mode: str, root: str, n: int, batch_size: int, grain_workers: int, widths: tuple[int, ...]) -> dict:
    """One pass of ``mode`` over the first ``n`` images into the jitted feature extraction (run in a fresh process)."""
    import gc

    import jax
    import numpy as np

    from jinterp import backbones
    from jinterp.core.features import iter_features

    if mode == "grain":
        try:
            import grain.python  # noqa: F401
        except ImportError as e:
            return {"mode": mode, "n": n, "skipped": f"grain is not importable ({e})"}
    model = backbones.create("convnet", num_classes=10, widths=widths)
    variables = backbones.init(model, jax.random.key(0), (224, 224, 3))
    warm = [np.zeros((batch_size, 224, 224, 3), np.uint8)]
    for _ in iter_features(model, variables, iter(warm), ["relu4"], batch_size=batch_size):
        pass  # compiled before the clock starts (shorter batches are padded to it: no recompilation)
    t0, c0 = time.perf_counter(), _cpu_s()
    seen = 0
    stream = _batches(mode, Path(root), n, batch_size, grain_workers)
    for out in iter_features(model, variables, stream, ["relu4"], batch_size=batch_size):
        seen += int(out["relu4"].shape[0])
    del stream
    gc.collect()  # grain's worker processes exit and are reaped: their CPU time counts
    t1, c1 = time.perf_counter(), _cpu_s()
    if seen != n:
        raise RuntimeError(f"{mode}: {seen} images seen, {n} expected")
    return {"mode": mode, "n": n, "batch_size": batch_size, "grain_workers": grain_workers if mode == "grain" else None,
            "wall_s": t1 - t0, "img_s": n / (t1 - t0), "cpu_per_wall": (c1 - c0) / (t1 - t0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=2, help="rounds; each round measures every mode once, in order")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grain-workers", type=int, default=1, help="grain DataLoader worker processes")
    ap.add_argument("--widths", type=int, nargs="*", default=[16, 32, 64, 64])
    ap.add_argument("--workdir", default=None, help="where to write the images (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written folder and records")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child mode: MODE:ROOT
    args = ap.parse_args(argv)
    if args.measure:
        mode, _, root = args.measure.partition(":")
        print(json.dumps(measure(mode, root, args.n, args.batch_size, args.grain_workers, tuple(args.widths))))
        return

    from jinterp.data.broden_writer import write_synthparts_broden

    work = Path(args.workdir or tempfile.mkdtemp(prefix="data_readers_"))
    root = work / "broden"
    rows = []
    try:
        index = root / "index.csv"
        if not (args.keep and index.exists() and len(index.read_text().splitlines()) > args.n
                and (root / RECORDS).exists()):
            t = time.perf_counter()
            write_synthparts_broden(root, args.n, size=224)
            write_records(root)
            print(json.dumps({"written": args.n, "write_s": time.perf_counter() - t,
                              "loadavg_before": os.getloadavg()}), flush=True)
        for rep in range(args.reps):
            for mode in args.modes:
                cmd = [sys.executable, "-m", "jinterp.bench.data_readers", "--measure", f"{mode}:{root}",
                       "--n", str(args.n), "--batch-size", str(args.batch_size),
                       "--grain-workers", str(args.grain_workers), "--widths", *map(str, args.widths)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if out.returncode != 0:
                    raise SystemExit(f"measurement {mode} failed:\n{out.stderr[-3000:]}")
                row = {**json.loads(out.stdout.strip().splitlines()[-1]), "rep": rep, "loadavg": os.getloadavg()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| round | mode | images/s | CPU/wall | 1-min load |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['rep']} | {r['mode']} | skipped: {r['skipped']} | | |")
        else:
            print(f"| {r['rep']} | {r['mode']} | {r['img_s']:.1f} | {r['cpu_per_wall']:.2f} | {r['loadavg'][0]:.1f} |")


if __name__ == "__main__":
    main()
