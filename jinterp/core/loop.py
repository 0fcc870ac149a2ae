"""The training loop: progress bar, ``metrics.jsonl``, periodic eval and checkpoints, NaN guard, resume.

    state, start, pos = restore_or_init(ckpt, state, workdir)   # pos: the saved data position or None
    train_iter = BatchIterator(train_ds, batch_size, seed=seed, mesh=mesh, position=pos)
    state = train_loop(state, train_step=step, train_iter=train_iter, num_steps=n, workdir=workdir,
                       checkpointer=ckpt, eval_fn=lambda s: evaluate(...), ...)

``train_iter`` is a resumable iterator of batches: ``next(it)`` gives a dict of arrays with a leading batch
axis, and ``it.get_state()`` (or ``it.position().to_dict()`` of a ``jinterp.data.BatchIterator``) a JSON-able
position after the batches consumed so far, from which the caller rebuilds/seeks the iterator on resume.
The loop stores the position with every checkpoint, so a restart sees the same batches an uninterrupted run
would.

Host syncs: metrics stay on device and are fetched every ``log_every`` steps, at eval/checkpoint steps and at
the last step; that is also when the loss/gradient norm is checked for NaN/Inf. Every checkpoint step is a
sync step, so a non-finite state is never saved: the run stops with ``TrainingError`` naming the first bad
step and the last good checkpoint stays as it was.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jinterp.core import sharding as shd
from jinterp.core import tensorboard as tb
from jinterp.core.checkpoint import Checkpointer
from jinterp.core.run import is_primary
from jinterp.errors import StorageError, TrainingError

METRICS_FILE = "metrics.jsonl"
# Metrics whose non-finite value means the run diverged.
GUARDED = ("loss", "grad_norm")


class MetricsWriter:
    """Appends ``{"step", "split", "metrics", "time"}`` lines to ``<workdir>/metrics.jsonl``; with TensorBoard
    logging on (``tensorboard=True``, or ``None`` and :func:`jinterp.core.tensorboard.logging` active, as
    ``--tensorboard`` does), also the same scalars, steps and times to a new event file in ``<workdir>/tb/``."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool | None = None):
        self.path = Path(workdir) / METRICS_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _storage_error(self.path.parent, e) from e
        on = tb.is_enabled() if tensorboard is None else tensorboard
        # In a multi-process job only process 0 logs (the processes see the same metrics; two writers would
        # interleave lines and create one event file each).
        self.primary = is_primary()
        self.events = tb.EventWriter(self.path.parent / tb.TB_DIR) if on and self.primary else None

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        line = {"step": int(step), "split": split,
                "metrics": {k: _jsonable(v) for k, v in metrics.items()}, "time": time.time()}
        if not self.primary:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            if self.events is not None:
                self.events.write(line["step"], tb.scalars_of(split, line["metrics"]), wall_time=line["time"])
        except OSError as e:
            raise _storage_error(self.path if self.events is None or self.events.path is None
                                 else self.events.path, e) from e

    def truncate_after(self, step: int) -> None:
        """Drops lines past ``step`` (written by a run that was killed before its next checkpoint), so a
        resumed run's log reads like an uninterrupted one; the TensorBoard event files in ``<workdir>/tb/`` (if
        any, whether or not this writer logs to TensorBoard) are cut back the same way. Process 0 only."""
        if not self.primary:
            return
        try:
            tb.truncate_after(self.path.parent / tb.TB_DIR, step)
        except OSError as e:
            raise _storage_error(self.path.parent / tb.TB_DIR, e) from e
        if not self.path.exists():
            return
        try:
            lines = self.path.read_text().splitlines()
        except OSError as e:
            raise _storage_error(self.path, e) from e
        keep = []
        for raw in lines:
            try:
                if json.loads(raw)["step"] <= step:
                    keep.append(raw)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
        if len(keep) == len(lines):
            return  # nothing to drop: leave the file (and a read-only work directory) alone
        try:
            self.path.write_text("".join(k + "\n" for k in keep))
        except OSError as e:
            raise _storage_error(self.path, e) from e

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]


def _storage_error(path: Path, e: OSError) -> StorageError:
    return StorageError(f"cannot write {path} ({e.strerror or e}); free disk space or make the work directory "
                        "writable, then rerun the same command: it resumes from the last complete checkpoint, "
                        "which is intact.")


def _jsonable(v: Any) -> Any:
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def restore_or_init(checkpointer: Checkpointer | None, state: Any,
                    workdir: str | Path | None = None) -> tuple[Any, int, dict | None]:
    """Resumes from the latest checkpoint if there is one; returns ``(state, start_step, data_state)``.

    ``state`` is the freshly initialized state (its structure and shardings are the restore target);
    ``data_state`` is the iterator position saved with the checkpoint (None for a fresh run), to build or
    seek the train iterator with. ``metrics.jsonl`` is cut back to the restored step.
    """
    if checkpointer is None or checkpointer.latest_step is None:
        return state, int(jax.device_get(state.step)), None
    state, meta = checkpointer.restore(state)
    step = int(jax.device_get(state.step))
    if workdir is not None:
        MetricsWriter(workdir).truncate_after(step)
    return state, step, meta.get("data")


def data_position(train_iter: Any) -> dict | None:
    """The JSON position of a resumable iterator: ``get_state()``, or ``position()`` of a
    ``jinterp.data.BatchIterator``; None if it has neither."""
    if hasattr(train_iter, "get_state"):
        return train_iter.get_state()
    if hasattr(train_iter, "position"):
        pos = train_iter.position()
        return pos.to_dict() if hasattr(pos, "to_dict") else pos
    return None


def _first_nonfinite(history: list[tuple[int, dict[str, np.ndarray]]]) -> tuple[int, str, float] | None:
    for step, m in history:
        for k in GUARDED:
            if k in m and not np.all(np.isfinite(m[k])):
                return step, k, float(np.asarray(m[k]).ravel()[0])
    return None


def _mean_metrics(history: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, float]:
    keys = history[-1][1].keys()
    out = {k: float(np.mean([np.asarray(m[k], np.float64) for _, m in history if k in m])) for k in keys}
    if "lr" in out:
        out["lr"] = float(history[-1][1]["lr"])  # the current value, not an average
    return out


def _batch_size(batch: Mapping[str, Any]) -> int:
    leaves = jax.tree.leaves(batch)
    return int(np.shape(leaves[0])[0]) if leaves else 0


def train_loop(state: Any, *, train_step: Callable, train_iter: Any, num_steps: int,
               workdir: str | Path, mesh: Mesh | None = None, checkpointer: Checkpointer | None = None,
               eval_fn: Callable[[Any], Mapping[str, float]] | None = None, log_every: int = 50,
               eval_every: int = 0, ckpt_every: int = 0, progress: bool = True,
               desc: str = "train", tensorboard: bool | None = None) -> Any:
    """Runs ``train_step`` from ``state.step`` to ``num_steps``; returns the final state.

    train_step: ``(state, batch) -> (state, metrics)`` (jitted, state donated). eval_fn: ``state -> dict``
    of host floats, logged with split ``"test"`` every ``eval_every`` steps and at the end. Checkpoints every
    ``ckpt_every`` steps and at the last step. Raises TrainingError on a NaN/Inf loss or gradient norm.
    tensorboard: also log to ``<workdir>/tb/`` (None: as :func:`jinterp.core.tensorboard.logging` says).
    """
    writer = MetricsWriter(workdir, tensorboard=tensorboard)
    start = int(jax.device_get(state.step))
    # Lines past the step we start from were written by a run killed before its next checkpoint (or before the
    # first one): drop them, so the log reads like an uninterrupted run's, with every step once.
    writer.truncate_after(start)
    log_every = max(int(log_every), 1)
    history: list[tuple[int, dict[str, Any]]] = []
    pbar = tqdm(total=num_steps, initial=start, desc=desc, unit="step", disable=not progress,
                dynamic_ncols=True, mininterval=1.0)
    t_last, examples = time.perf_counter(), 0
    last_good = checkpointer.latest_step if checkpointer is not None else None
    try:
        for step in range(start, num_steps):
            batch = next(train_iter)
            examples += _batch_size(batch)
            batch = shd.shard_batch(batch, mesh) if mesh is not None else batch
            state, metrics = train_step(state, batch)
            history.append((step + 1, metrics))
            done = step + 1
            is_last = done == num_steps
            do_eval = eval_fn is not None and ((eval_every and done % eval_every == 0) or is_last)
            do_ckpt = checkpointer is not None and ((ckpt_every and done % ckpt_every == 0) or is_last)
            if not (done % log_every == 0 or is_last or do_eval or do_ckpt):
                continue

            # ---- sync point: fetch metrics, guard against divergence, log
            host = [(s, jax.device_get(m)) for s, m in history]
            history.clear()
            bad = _first_nonfinite(host)
            if bad is not None:
                bad_step, name, value = bad
                where = (f"the last good checkpoint (step {last_good}) in {checkpointer.directory} is kept"
                         if last_good is not None else "no checkpoint had been written yet")
                raise TrainingError(
                    f"training diverged: {name} is {value} at step {bad_step}; stopped without saving, "
                    f"{where}. Lower the learning rate (--set optim.lr=...), clip gradients "
                    f"(--set optim.clip_norm=1.0) or add warmup, and rerun with a new --workdir.")
            now = time.perf_counter()
            train_metrics = _mean_metrics(host)
            train_metrics["examples_per_s"] = examples / max(now - t_last, 1e-9)
            t_last, examples = now, 0
            writer.write(done, "train", train_metrics)
            pbar.set_postfix(_postfix(train_metrics), refresh=False)
            pbar.update(done - pbar.n)

            if do_eval:
                eval_metrics = dict(eval_fn(state))
                writer.write(done, "test", eval_metrics)
                pbar.write(f"step {done}: " + ", ".join(f"test {k} {v:.4g}" for k, v in eval_metrics.items()
                                                         if isinstance(v, float)))
                t_last = time.perf_counter()  # keep eval time out of the training throughput
            if do_ckpt:
                # Belt and braces: finite loss/gradients imply finite params unless the update itself
                # overflowed; one reduction per checkpoint is cheap next to writing it.
                if not bool(_all_finite(state.params)):
                    raise TrainingError(
                        f"training diverged: the parameters hold NaN/Inf at step {done}; stopped without "
                        f"saving, the last good checkpoint (step {last_good}) in {checkpointer.directory} is "
                        "kept. Lower the learning rate (--set optim.lr=...) and rerun with a new --workdir.")
                checkpointer.save(done, state, data_state=data_position(train_iter))
                last_good = done
    except BaseException:
        pbar.close()
        if checkpointer is not None:  # let committed saves land, without hiding the error on its way out
            checkpointer.wait(after_error=True)
        raise
    pbar.close()
    if checkpointer is not None:
        checkpointer.wait()
    return state


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _postfix(m: Mapping[str, float]) -> dict[str, str]:
    out = {}
    for k, short in (("loss", "loss"), ("accuracy", "acc"), ("examples_per_s", "ex/s")):
        if k in m and math.isfinite(m[k]):
            out[short] = f"{m[k]:.4g}" if k != "examples_per_s" else f"{m[k]:.0f}"
    return out
