"""Reads TensorBoard event files back with the ``tensorboard`` package's own loader, and metrics.jsonl the same way,
for the tests that compare the two (``tests/core/test_tensorboard.py``, ``tests/core/test_results.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jinterp.core import loop


def tb_scalars(directory: Path) -> list[tuple[int, str, float, float]]:
    """``(step, tag, value, wall_time)`` of every scalar in the event files of ``directory``, in file-name order,
    as TensorBoard's own loader reads them."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    out = []
    files = sorted(directory.glob("events.out.tfevents.*"))
    for path in files:
        events = list(event_file_loader.EventFileLoader(str(path)).Load())
        assert events[0].file_version == "brain.Event:2"
        for ev in events:
            for v in ev.summary.value:
                # The loader migrates simple_value to a scalar tensor of the scalars plugin, as TensorBoard shows it
                assert v.metadata.plugin_data.plugin_name == "scalars"
                out.append((ev.step, v.tag, float(tensor_util.make_ndarray(v.tensor)), ev.wall_time))
    return out


def jsonl_scalars(workdir: Path) -> list[tuple[int, str, float, float]]:
    out = []
    for line in loop.MetricsWriter(workdir).read():
        for k, v in line["metrics"].items():
            out.append((line["step"], f"{line['split']}/{k}", float(np.float32(v)), line["time"]))
    return out


def csg_jsonl_scalars(workdir: Path) -> list[tuple[int, str, float]]:
    """CSG's own epoch log (``{"run", "epoch", ...}`` lines) as ``(epoch, "<run>/<key>", float32 value)``."""
    import json

    out = []
    for raw in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(raw)
        for k, v in rec.items():
            if k != "run" and isinstance(v, (int, float)):  # bools too: numeric in TensorBoard
                out.append((rec["epoch"], f"{rec['run']}/{k}", float(np.float32(v))))
    return out
