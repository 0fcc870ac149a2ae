"""Checkpoints of a run: Orbax ``CheckpointManager`` with a state item and a JSON metadata item.

Layout of ``<workdir>/checkpoints/<step>/``: ``state`` (the TrainState as a pure nested dict: step, params,
model state, optimizer state, loop RNG) and ``meta`` (JSON: the config, the data-iterator position, the step,
package versions). Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves only a ``*.orbax-checkpoint-tmp-*`` directory that is never listed as a step; the
previous complete step is what a restart resumes from.

A checkpoint that cannot be read, or that belongs to another run (different config, different parameter
shapes), raises ``CheckpointError`` naming the directory and the fix; nothing is deleted or overwritten.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

import jinterp
from jinterp.core import config as cfglib
from jinterp.errors import CheckpointError, JinterpError, StorageError

STATE, META = "state", "meta"

# Config fields that only affect logging/bookkeeping; a restart may change them without breaking bitwise
# equality of the result.
RESUMABLE_CHANGES = frozenset({"log_every", "eval_every", "ckpt_every", "keep"})

log = logging.getLogger(__name__)


_STORAGE_HINTS = ("no space left", "resource_exhausted", "read-only file system", "permission denied",
                  "permission_denied", "disk quota", "not a directory", "file exists")


def _is_storage_error(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a file-system failure: OSError, or TensorStore's status text."""
    while e is not None:
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            return True
        if any(h in str(e).lower() for h in _STORAGE_HINTS):
            return True
        e = e.__cause__ or e.__context__
    return False


_PHRASES = ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip()
    for phrase in _PHRASES:  # TensorStore's status text: keep the cause and the file, drop the noise
        if phrase in text:
            m = re.search(r'"([^"]+)"', text)
            return f"{phrase}: {m.group(1)}" if m else phrase
    return text.splitlines()[0][:300] if text else type(e).__name__


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings when the leaves have them) for an Orbax restore target."""

    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    from jinterp.core.train import path_name  # local: train imports sharding/config only

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for p, x in flat:
        shape = tuple(getattr(x, "shape", np.shape(x)))
        dtype = str(getattr(x, "dtype", np.asarray(x).dtype))
        out[path_name(p)] = (shape, dtype)
    return out


class Checkpointer:
    """Save/restore a TrainState plus JSON metadata under ``directory`` (keeps the ``keep`` newest steps).

    ``config`` (a dict from ``config.to_dict``) is stored with every save and compared on restore; keys in
    ``RESUMABLE_CHANGES`` may differ. Saves are asynchronous (the device->host copy happens before ``save``
    returns, so the caller may donate the state buffers right after); ``close()`` waits for the last one.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, config: Mapping[str, Any] | None = None,
                 async_save: bool = True, ignore_config_keys: Iterable[str] = RESUMABLE_CHANGES):
        self.directory = Path(directory).absolute()
        self.config = dict(config) if config is not None else None
        self.ignore = frozenset(ignore_config_keys)
        self._requested: list[int] = []  # steps asked to be saved, to name the one an async failure hit
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} exists and is not a directory; "
                                  "use a new --workdir")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=True, enable_async_checkpointing=async_save)
        try:
            self._mngr = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()})
        except Exception as e:  # an unreadable directory, a file where a step dir should be, ...
            if _is_storage_error(e):
                raise StorageError(f"cannot create or open the checkpoint directory {self.directory} "
                                   f"({_reason(e)}); make the work directory writable or use another --workdir"
                                   ) from e
            raise CheckpointError(self._unreadable(self.directory, e)) from e

    # ------------------------------------------------------------------------------------------ queries
    def all_steps(self) -> list[int]:
        """Complete (committed) steps, ascending; temporary directories of interrupted saves are excluded."""
        return sorted(self._mngr.all_steps())

    @property
    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # --------------------------------------------------------------------------------------------- save
    def save(self, step: int, state: Any, *, data_state: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> None:
        """Saves ``state`` (any pytree; TrainState is stored as a pure dict) at ``step``.

        The caller guarantees the state is finite (the loop checks before saving); ``data_state`` is the
        iterator position (JSON) to restore with the state.
        """
        meta = {
            "step": int(step),
            "config": self.config,
            "data": dict(data_state) if data_state is not None else None,
            "extra": dict(extra) if extra is not None else {},
            "versions": {"jinterp": jinterp.__version__, "jax": jax.__version__},
        }
        state_dict = flax.serialization.to_state_dict(state)
        self._requested.append(int(step))
        try:
            self._mngr.save(int(step), args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state_dict), META: ocp.args.JsonSave(meta)}), force=True)
        except Exception as e:  # disk full, read-only directory, or an earlier async save that failed
            raise self._write_failed(int(step), e) from e

    # ------------------------------------------------------------------------------------------ restore
    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of ``step`` (CheckpointError if unreadable)."""
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
            meta = out[META]
        except Exception as e:
            raise CheckpointError(self._unreadable(self._step_dir(step), e)) from e
        if not isinstance(meta, Mapping) or "step" not in meta:
            raise CheckpointError(self._unreadable(self._step_dir(step), ValueError("metadata is malformed")))
        return dict(meta)

    def check_config(self, meta: Mapping[str, Any], step: int) -> None:
        if self.config is None or meta.get("config") is None:
            return
        d = {k: v for k, v in cfglib.diff(meta["config"], self.config).items()
             if k.split(".")[-1] not in self.ignore}
        if d:
            changes = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(d.items()))
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} was written with a different config ({changes}). "
                f"It was left untouched; rerun with the original settings to resume, or use a new --workdir "
                f"(or delete {self.directory}) to start a new run.")

    def check_shapes(self, target: Any, step: int) -> None:
        try:
            stored = self._mngr.item_metadata(step)[STATE]
        except Exception as e:
            raise CheckpointError(self._unreadable(self._step_dir(step), e)) from e
        if stored is None:
            raise CheckpointError(self._unreadable(self._step_dir(step), ValueError("no state item")))
        want = _flat_shapes(flax.serialization.to_state_dict(target))
        have = _flat_shapes(stored)
        problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
        problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
        problems += [f"{k}: checkpoint {have[k][0]} {have[k][1]} vs model {want[k][0]} {want[k][1]}"
                     for k in sorted(set(want) & set(have)) if have[k] != want[k]]
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} does not match this model/optimizer ({shown}). "
                f"It was left untouched; use a new --workdir (or delete {self.directory}) to start over.")

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (default: latest) into the structure/shardings of ``target``.

        Returns ``(state, meta)``. Raises CheckpointError if there is no checkpoint, if it is unreadable,
        or if its config/shapes do not match.
        """
        if step is None:
            step = self.latest_step
            if step is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
        meta = self.read_meta(step)
        self.check_config(meta, step)
        self.check_shapes(target, step)
        target_dict = flax.serialization.to_state_dict(target)
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(_abstract(target_dict))}))
            state = flax.serialization.from_state_dict(target, out[STATE])
        except Exception as e:
            raise CheckpointError(self._unreadable(self._step_dir(step), e)) from e
        return state, meta

    # ------------------------------------------------------------------------------------------ helpers
    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _unreadable(self, path: Path, e: BaseException) -> str:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if path.parent == self.directory and path.name.isdigit():
            earlier = [s for s in self._committed_steps() if s < int(path.name)]
            then = (f"the run resumes from step {earlier[-1]}" if earlier else "the run starts over (no earlier "
                    "checkpoint)")
            return (f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {reason}). It was left "
                    f"untouched; delete just that step directory ({path}) and rerun the same command: {then}; "
                    "or use a new --workdir.")
        return (f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {reason}). "
                f"It was left untouched; use a new --workdir, or delete {self.directory} to start over.")

    def _committed_steps(self) -> list[int]:
        """Complete steps, read from the directory listing (the manager's view may be stale after a failure)."""
        try:
            return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())
        except OSError:
            return []

    def _write_failed(self, step: int | None, e: BaseException) -> JinterpError:
        try:  # let earlier asynchronous saves finish committing before saying which steps are intact
            self._mngr.wait_until_finished()
        except Exception:
            pass
        steps = self._committed_steps()
        # An asynchronous save that failed surfaces at the next save or wait: name the step it was writing.
        m = re.search(r"(\d+)\.orbax-checkpoint-tmp", _reason(e) + str(e))
        pending = [s for s in self._requested if s not in steps]
        step = int(m.group(1)) if m else (min(pending) if pending else step)
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        kept = (f"the checkpoints already written (steps {steps}) are intact; rerun the same command to resume "
                f"from step {steps[-1]}" if steps else "no earlier checkpoint exists; rerun the same command to "
                "start over")
        if _is_storage_error(e):
            return StorageError(f"cannot write {what} in {self.directory} ({_reason(e)}). The incomplete save is "
                                f"never loaded and {kept} after freeing disk space or making the directory writable.")
        return CheckpointError(f"saving {what} in {self.directory} failed ({type(e).__name__}: {_reason(e)}); "
                               f"{kept}.")

    def wait(self, *, after_error: bool = False) -> None:
        """Blocks until pending asynchronous saves are committed. A save that failed (disk full while writing
        arrays) raises a clear error, unless ``after_error``: then an error is already on its way out and a
        second one would only hide it, so the failure is dropped (the incomplete save is never loaded)."""
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            if not after_error:
                raise self._write_failed(None, e) from e

    def close(self, *, after_error: bool = False) -> None:
        """Waits for pending saves and releases the manager (its threads, open files). Either failing raises
        one clear error naming the intact checkpoints, unless ``after_error`` (see :meth:`wait`)."""
        failure = None
        for finish in (self._mngr.wait_until_finished, self._mngr.close):
            try:
                finish()
            except Exception as e:  # a full disk can surface in either; close the manager regardless
                failure = failure or e
        if failure is not None and not after_error:
            raise self._write_failed(None, failure) from failure

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(after_error=exc_type is not None)
