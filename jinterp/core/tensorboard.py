"""TensorBoard event files written natively (no TensorFlow, no ``tensorboard`` package at run time).

    with tensorboard.logging():          # what `jinterp <command> --tensorboard` does around the command
        run(cfg, "runs/x")               # the training loop also writes runs/x/tb/events.out.tfevents.*
    tensorboard --logdir runs/x/tb       # (the tensorboard package: pip install tensorboard)

:class:`jinterp.core.loop.MetricsWriter` mirrors every ``metrics.jsonl`` line into ``<workdir>/tb/`` while
logging is on: one scalar per metric, tagged ``<split>/<metric>`` (``train/loss``, ``test/accuracy``), at the same
step and value (as float32, TensorBoard's ``simple_value``). Each writer (each training session: a fresh run or a
resume) starts a new event file; on resume the loop cuts ``metrics.jsonl`` back to the restored step and the event
files of the work directory the same way (events past that step are dropped from their files), so TensorBoard shows
every step once, as an uninterrupted run would have logged it.

File format (TensorFlow's ``TFRecord`` of ``Event`` protos; ``tensorflow/core/util/event.proto``,
``tensorflow/core/framework/summary.proto``), encoded by hand here:

* record: ``uint64 length`` (little endian), ``uint32 masked_crc32c(length bytes)``, ``data``,
  ``uint32 masked_crc32c(data)``; ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2³²).
* ``Event``: ``wall_time`` (1, double), ``step`` (2, int64), ``file_version`` (3, string, the first event:
  ``"brain.Event:2"``), ``summary`` (5, message) → ``Summary.value`` (1, repeated) → ``Value{tag (1, string),
  simple_value (2, float)}``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

TB_DIR = "tb"
FILE_VERSION = "brain.Event:2"
_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("jinterp_tensorboard", default=False)


# ------------------------------------------------------------------------------------------------ on / off
@contextlib.contextmanager
def logging(enabled: bool = True) -> Iterator[None]:
    """Within the block, training loops also write TensorBoard event files (``--tensorboard`` in the CLI).

    A run-time switch rather than a config field: it changes no result, so it must not change any stage's
    fingerprint or be compared on resume.
    """
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def is_enabled() -> bool:
    return _enabled.get()


# ------------------------------------------------------------------------------------------------ CRC32C
def _crc_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord frame around ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ------------------------------------------------------------------------------------------------ protobuf
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def event(step: int, *, wall_time: float, scalars: Mapping[str, float] | None = None,
          file_version: str | None = None) -> bytes:
    """An ``Event`` proto: ``file_version`` or a summary of ``simple_value`` scalars."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
                          for tag, value in scalars.items())
        out += _bytes_field(5, values)
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _top_fields(data: bytes) -> Iterator[tuple[int, int]]:
    """``(field number, varint value or 0)`` of each top-level field of an encoded message; stops where it cannot
    parse."""
    i = 0
    try:
        while i < len(data):
            key, i = _read_varint(data, i)
            field, wire = key >> 3, key & 7
            value = 0
            if wire == 0:
                value, i = _read_varint(data, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                n, i = _read_varint(data, i)
                i += n
            else:
                return
            yield field, value
    except IndexError:
        return


def event_step(data: bytes) -> int | None:
    """The ``step`` field of an encoded ``Event`` (None if absent or unreadable)."""
    for field, value in _top_fields(data):
        if field == 2:
            return value - (1 << 64) if value >= 1 << 63 else value
    return None


def has_summary(data: bytes) -> bool:
    """Whether an encoded ``Event`` carries a summary (field 5), not only the file version."""
    return any(field == 5 for field, _ in _top_fields(data))


def read_records(path: str | Path) -> list[tuple[int, bytes]]:
    """``(end offset, data)`` of every complete, CRC-valid record of an event file, in order; stops at the first
    torn or corrupt one (a record cut short by a kill)."""
    buf = Path(path).read_bytes()
    out, i = [], 0
    while i + 12 <= len(buf):
        header = buf[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", buf[i + 8:i + 12])[0] != masked_crc32c(header) or i + 16 + n > len(buf):
            break
        data = buf[i + 12:i + 12 + n]
        if struct.unpack("<I", buf[i + 12 + n:i + 16 + n])[0] != masked_crc32c(data):
            break
        i += 16 + n
        out.append((i, data))
    return out


# ------------------------------------------------------------------------------------------------ writer
def scalars_of(split: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"<split>/<name>": float}`` for every finite-or-not scalar metric; non-scalar metrics are skipped."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        if a.ndim == 0 and a.dtype.kind in "biuf":
            out[f"{split}/{k}"] = float(a)
    return out


class EventWriter:
    """Appends scalar summaries to one new event file under ``directory`` (created on the first write).

    Every write opens, appends and closes the file, like ``metrics.jsonl``: a kill loses at most the record being
    written, which :func:`read_records` (and TensorBoard) skip.
    """

    _count = 0

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path: Path | None = None

    def _open_new(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        EventWriter._count += 1
        # Names sort by creation time (TensorBoard reads the files of a directory in name order).
        name = (f"events.out.tfevents.{time.time():017.6f}.{socket.gethostname()}.{os.getpid()}."
                f"{EventWriter._count}.jinterp")
        path = self.directory / name
        path.write_bytes(record(event(0, wall_time=time.time(), file_version=FILE_VERSION)))
        return path

    def write(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        if not scalars:
            return
        if self.path is None:
            self.path = self._open_new()
        with self.path.open("ab") as f:
            f.write(record(event(step, wall_time=time.time() if wall_time is None else wall_time,
                                 scalars=scalars)))


def truncate_after(directory: str | Path, step: int) -> None:
    """Drops every event past ``step`` from the event files in ``directory`` (and torn trailing records); a file
    left with no summary is removed. Files with nothing to drop are not touched (nor is a read-only directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("events.out.tfevents.*")):
        keep_end, summaries = 0, False
        for end, data in read_records(path):
            s = event_step(data)
            if s is not None and s > step:
                break
            keep_end, summaries = end, summaries or has_summary(data)
        if not summaries:
            path.unlink()
        elif keep_end < path.stat().st_size:
            with path.open("r+b") as f:
                f.truncate(keep_end)
