"""The run skeleton every program uses: a work directory, a lock, named stages with fingerprints, clear errors.

    with Run(workdir, cfg, method="cladec", restart=False) as r:
        st = r.stage("backbone", fields={...}, inputs={"data": data_fingerprint(spec)}, paths=["backbone"],
                     resumable=True)
        if not st.reusable:
            ...compute into st's paths...
        st.finish()
        r.write_json("results.json", results)

A run is a sequence of named stages. Each stage has a **fingerprint**: a hash of the config fields, the inputs
(file digests, upstream stage fingerprints) and the code version it depends on. ``<workdir>/config.json`` records,
for every stage, its fingerprint, the fields and inputs that made it, its status (``running`` / ``done``) and the
time; a rerun reuses a ``done`` stage only when the fingerprint is the same, resumes a ``running`` one with the
same fingerprint (its checkpoints), and otherwise discards the stage's outputs (``paths``) and recomputes it, so a
``results.json`` never mixes the numbers of one config with the labels of another. A *resumable* stage (a
training with checkpoints) saved under other settings is refused instead (its checkpoints are work the user may
want, finished or not): the one-line error names the differing fields and the two ways out, a new ``--workdir``
or ``--restart`` (discard the stages whose settings differ, and recompute them).

A lock file (``<workdir>/.jinterp.lock``, holding the pid) keeps a second process out of the work directory; a
lock left by a process that no longer runs (kill -9) is taken over. Any ``PermissionError`` / ``OSError``
(ENOSPC, EROFS, EDQUOT) that escapes the run becomes a :class:`~jinterp.errors.StorageError` naming the path.

The weights of every program are loaded through :func:`load_backbone_weights` (one place to re-point).

Several processes (a multi-host job, ``jax.process_count() > 1``): every process opens the same Run and takes the
same stage decisions, but only process 0 (``Run.primary``) takes the lock and writes ``config.json``, the run's
JSON outputs and deletes outdated outputs; all processes read ``config.json`` before process 0 first writes it (a
barrier), so they agree on which stages to reuse. Checkpoints go through Orbax's CheckpointManager, built for
multi-process saves (every process calls save; ``tests/core/test_multihost_checkpoint.py`` saves, restarts and
resumes with two processes on one shared directory). Every other file a program writes (arrays, figures, reports) goes
through :func:`write_file` (or :meth:`Run.write_file`): process 0 writes it through a temporary name and a rename,
then every process waits at a barrier, so a file one process reads back right after (a prepared data file) is
complete on a shared work directory; :func:`append_text` appends a log line on process 0 only. The work directory
must be one file system that every process sees (as Orbax's multi-process checkpoints require too).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinterp
from jinterp.errors import CheckpointError, ConfigError, JinterpError, StorageError

CONFIG_FILE = "config.json"
LOCK_FILE = ".jinterp.lock"
# errno values that mean "this directory cannot be written" (as opposed to a missing input file).
STORAGE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                            errno.EISDIR})

_held_locks: dict[Path, int] = {}  # lock path -> how many Runs of this process hold it (nested programs)


# ------------------------------------------------------------------------------------------ fingerprints
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(obj: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of ``obj``."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:16]


_file_digests: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | Path) -> str:
    """Content digest of a file, or of a directory's listing (names, sizes, mtimes); ``missing`` if absent."""
    p = Path(path)
    try:
        if p.is_dir():
            entries = sorted((str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns)
                             for q in p.rglob("*") if q.is_file())
            return "dir:" + fingerprint(entries)
        st = p.stat()
    except OSError:
        return "missing"
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _file_digests:  # hash once per process (a large CIFAR batch file is read once)
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _file_digests[key] = h.hexdigest()[:16]
    return _file_digests[key]


def data_fingerprint(spec: str) -> dict[str, str]:
    """The data a ``jinterp.data.load`` spec reads: the spec itself plus a digest of every path in it."""
    out = {"spec": spec}
    for part in spec.split(":")[1:]:
        for token in part.split(","):
            if token and "=" not in token and Path(token).exists():
                out[token] = file_fingerprint(token)
    return out


def code_version(modules: Iterable[str] = ()) -> str:
    """jinterp's version plus a digest of the named modules' source (a stage recomputes when its code changes)."""
    import importlib.util

    digests = []
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        digests.append((name, file_fingerprint(origin) if origin else "?"))
    return f"{jinterp.__version__}:{fingerprint(digests)}"


# --------------------------------------------------------------------------------------------- storage
def storage_error(path: str | Path, e: OSError, *, what: str = "write") -> StorageError:
    reason = e.strerror or type(e).__name__
    return StorageError(f"cannot {what} {path} ({reason}); make the work directory writable or free disk space, "
                        "then rerun the same command (it resumes from what was saved), or use another --workdir")


def is_storage_oserror(e: BaseException) -> bool:
    return (isinstance(e, OSError) and not isinstance(e, JinterpError)
            and (isinstance(e, PermissionError) or e.errno in STORAGE_ERRNOS))


def atomic_write_text(path: Path, text: str) -> None:
    """Writes through a temporary file and a rename: a kill mid-write leaves the old file, never half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True) if tmp.parent.exists() and os.access(tmp.parent, os.W_OK) else None
        raise storage_error(path, e) from e


def is_primary() -> bool:
    """Whether this process writes the run's files: process 0 of a multi-host job, or the only process."""
    return _process_layout()[1]


def write_file(path: str | Path, write: Callable[[Path], Any], *, keep_existing: bool = False) -> Path:
    """Writes one output file on process 0 only; returns ``path`` on every process.

    ``write(tmp)`` writes the content to ``tmp`` (a hidden name beside ``path`` with the same suffix, so
    ``np.savez``/``savefig`` keep their format), which is then renamed to ``path``: an interrupted run leaves the
    old file or none, never half a file. Parents are created. ``keep_existing``: leave a ``path`` that already
    exists untouched (decided by process 0 alone, so the processes cannot disagree). With several processes all of
    them then wait at a barrier, so every process can read ``path`` once this returns (every process must make
    the same ``write_file`` calls in the same order, as they make the same stage decisions).
    """
    path = Path(path)

    def write_through_tmp() -> None:
        if keep_existing and path.exists():
            return
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            tmp.replace(path)
        except BaseException as e:
            if os.access(tmp.parent, os.W_OK):
                tmp.unlink(missing_ok=True)
            if isinstance(e, JinterpError) or not isinstance(e, OSError):
                raise
            raise storage_error(path, e) from e

    on_process_0(write_through_tmp, f"jinterp.write_file({path})")
    return path


def on_process_0(work: Callable[[], Any], barrier: str) -> None:
    """Runs ``work()`` on process 0 only; with several processes all then wait at the barrier named ``barrier``,
    which every process reaches also when process 0's work failed (process 0 raises right after it)."""
    processes, primary = _process_layout()
    failed: BaseException | None = None
    if primary:
        try:
            work()
        except BaseException as e:  # noqa: BLE001 (raised below, after the barrier)
            failed = e
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(barrier)
    if failed is not None:
        raise failed


def append_text(path: str | Path, text: str) -> None:
    """Appends ``text`` to a log file (``metrics.jsonl``) on process 0 only (no barrier: nobody reads it back)."""
    if not is_primary():
        return
    try:
        with Path(path).open("a") as f:
            f.write(text)
    except OSError as e:
        raise storage_error(path, e) from e


def check_workdir(workdir: str | Path) -> Path:
    """A usable ``--workdir``: not empty, not a file."""
    if workdir is None or str(workdir).strip() == "":
        raise ConfigError("--workdir is empty; give a directory for the run's outputs (it is created when missing), "
                          "e.g. --workdir runs/x")
    p = Path(workdir)
    if p.exists() and not p.is_dir():
        raise StorageError(f"--workdir {p} is a file; pass a directory (it is created when missing)")
    return p


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(path).absolute().relative_to(Path(root).absolute())
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ lock
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie (killed, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def acquire_lock(workdir: Path) -> Path:
    """Creates ``<workdir>/.jinterp.lock`` with this pid; refuses while another live process holds it."""
    lock = (workdir / LOCK_FILE).absolute()
    if lock in _held_locks:
        _held_locks[lock] += 1
        return lock
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = -1  # a lock cut short by a kill: nobody can hold it
            if pid == os.getpid() or _pid_alive(pid):
                raise StorageError(
                    f"work directory {workdir} is in use by another jinterp process (pid {pid}, lock file {lock}); "
                    "wait for it to finish or use another --workdir (if no such process runs, delete the lock file)"
                ) from None
            try:  # stale: its process is gone; take it over
                lock.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise storage_error(lock, e) from e
            continue
        except OSError as e:
            raise storage_error(lock, e) from e
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {' '.join(sys.argv[:3])}\n")
        _held_locks[lock] = 1
        return lock
    raise StorageError(f"cannot take the lock {lock}: other processes keep creating it; use another --workdir")


def release_lock(lock: Path) -> None:
    n = _held_locks.get(lock, 0)
    if n > 1:
        _held_locks[lock] = n - 1
        return
    _held_locks.pop(lock, None)
    try:
        if lock.read_text().split()[0] == str(os.getpid()):
            lock.unlink()
    except (OSError, IndexError):
        pass


# ------------------------------------------------------------------------------------------------- run
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


class Stage:
    """One named stage of a run; see :meth:`Run.stage`."""

    def __init__(self, run: Run, name: str, fingerprint_: str, record: dict, reusable: bool, paths: list[Path]):
        self.run, self.name, self.fingerprint, self.record = run, name, fingerprint_, record
        self.reusable = reusable  # finished earlier with the same fingerprint: load its outputs
        self.paths = paths

    def finish(self, **info: Any) -> None:
        """Marks the stage done (its outputs are complete) in ``config.json``."""
        self.record.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
        self.run.save_record()


class Run:
    """A work directory held by this process for one program run (a context manager; see the module docstring).

    ``cfg``: the program's config dataclass (recorded in ``config.json`` so that ``--config <workdir>/config.json``
    reruns it exactly); ``method``: the command name; ``restart``: discard stages whose settings differ instead of
    refusing to resume them.
    """

    def __init__(self, workdir: str | Path, cfg: Any, *, method: str, restart: bool = False):
        self.workdir = check_workdir(workdir)
        self.cfg, self.method, self.restart = cfg, method, restart
        self._lock: Path | None = None
        self.stages: dict[str, dict] = {}
        self._previous: dict[str, dict] = {}
        self.processes, self.primary = _process_layout()

    # -------------------------------------------------------------------------------- context manager
    def __enter__(self) -> Run:
        if self.primary:
            try:
                self.workdir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise storage_error(self.workdir, e, what="create") from e
            self._lock = acquire_lock(self.workdir)
        try:
            self._previous = self._read_previous()  # written back once a stage passes its check
            if self.processes > 1:  # every process has read config.json before process 0 writes it
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"jinterp.Run({self.workdir})")
        except BaseException:
            if self._lock is not None:
                release_lock(self._lock)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._lock is not None:
            release_lock(self._lock)
        if exc is not None and is_storage_oserror(exc):
            path = Path(exc.filename) if exc.filename else self.workdir
            if _inside(path, self.workdir):
                raise storage_error(path, exc) from exc
            # an input outside the work directory (data, weights): not a disk or work-directory problem
            raise StorageError(f"cannot access {path} ({exc.strerror or type(exc).__name__}); check that the path "
                               "is the one you meant and that it is readable") from exc

    # -------------------------------------------------------------------------------------- record
    def _read_previous(self) -> dict[str, dict]:
        path = self.workdir / CONFIG_FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: no stage has a known provenance, all are recomputed (or refused)
        stages = saved.get("stages") if isinstance(saved, dict) else None
        return dict(stages) if isinstance(stages, dict) else {}

    def save_record(self) -> None:
        """``config.json``: the method, the config and, for every stage, what produced its outputs (process 0)."""
        from jinterp.core.config import to_dict

        if not self.primary:
            return

        stages = {**self._previous, **self.stages}
        record = {"method": self.method, "jinterp": jinterp.__version__, "config": to_dict(self.cfg),
                  "stages": stages}
        atomic_write_text(self.workdir / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True, default=str)
                          + "\n")

    # -------------------------------------------------------------------------------------- stages
    def stage(self, name: str, *, fields: Mapping[str, Any], inputs: Mapping[str, Any] | None = None,
              paths: Iterable[str] = (), resumable: bool = False, code: Iterable[str] = ()) -> Stage:
        """Opens stage ``name`` whose outputs live at ``paths`` (relative to the workdir).

        fields: the config values it depends on; inputs: digests of its input files and the fingerprints of the
        stages it reads; code: modules whose source it depends on. Returns a :class:`Stage` whose ``reusable``
        says its outputs are complete and current. Otherwise the outputs of another fingerprint are deleted
        first, except those of a ``resumable`` stage: CheckpointError naming the differences (without ``restart``).
        """
        inputs = dict(inputs or {})
        rec = {"fields": json.loads(_canonical(dict(fields))), "inputs": json.loads(_canonical(inputs)),
               "code": code_version(code)}
        fp = fingerprint(rec)
        prev = self._previous.get(name)
        abs_paths = [self.workdir / p for p in paths]
        if prev is not None and prev.get("fingerprint") == fp:
            record = {**prev, "fingerprint": fp, **rec}
            self.stages[name] = record
            if prev.get("status") == "done" and all(p.exists() for p in abs_paths):
                return Stage(self, name, fp, record, True, abs_paths)
            return Stage(self, name, fp, record, False, abs_paths)  # resume what it left
        present = [p for p in abs_paths if p.exists()]
        if present and resumable and not self.restart:
            raise CheckpointError(self._refusal(name, prev, rec, present))
        for p in present if self.primary else ():  # outputs of other settings: never reused, never mixed
            try:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            except OSError as e:
                raise storage_error(p, e, what="delete the outdated") from e
        record = {"fingerprint": fp, **rec, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.stages[name] = record
        self.save_record()
        return Stage(self, name, fp, record, False, abs_paths)

    def _refusal(self, name: str, prev: dict | None, rec: dict, present: list[Path]) -> str:
        if prev is None:
            what = "with settings this version cannot tell (no record in config.json)"
        else:
            old = {**{f"{k}": v for k, v in _flatten(prev.get("fields", {})).items()},
                   **{f"input {k}": v for k, v in _flatten(prev.get("inputs", {})).items()}, "code": prev.get("code")}
            new = {**{f"{k}": v for k, v in _flatten(rec["fields"]).items()},
                   **{f"input {k}": v for k, v in _flatten(rec["inputs"]).items()}, "code": rec["code"]}
            diffs = [f"{k}: saved {old.get(k)!r} vs now {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k)]
            shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else "")
            what = f"under other settings ({shown})"
        state = "a finished" if prev is not None and prev.get("status") == "done" else "an unfinished"
        names = ", ".join(str(p.relative_to(self.workdir)) for p in present)
        return (f"stage {name!r} in {self.workdir} holds {state} run {what}; its checkpoints were left "
                f"untouched. Rerun with the original settings to resume, use a new --workdir, or pass --restart "
                f"to discard it ({names}) and start this stage over")

    def upstream(self, name: str) -> str | None:
        """The fingerprint of stage ``name`` of this run (an input of the stages that read its outputs)."""
        rec = self.stages.get(name)
        return rec.get("fingerprint") if rec else None

    # -------------------------------------------------------------------------------------- outputs
    def write_json(self, relpath: str, obj: Any, **dumps: Any) -> Path:
        """Writes ``<workdir>/relpath`` (process 0 only; returns the path on every process)."""
        text = json.dumps(obj, indent=2, **dumps) + "\n"
        return write_file(self.workdir / relpath, lambda tmp: tmp.write_text(text))

    def write_file(self, relpath: str, write: Callable[[Path], Any], *, keep_existing: bool = False) -> Path:
        """:func:`write_file` of ``<workdir>/relpath`` (process 0 writes; returns the path on every process)."""
        return write_file(self.workdir / relpath, write, keep_existing=keep_existing)


def _process_layout() -> tuple[int, bool]:
    """``(jax.process_count(), this is process 0)``; one process when JAX has not been imported (no job to join)."""
    if "jax" not in sys.modules:
        return 1, True
    import jax

    return jax.process_count(), jax.process_index() == 0


# ---------------------------------------------------------------------------------------- --config FILE
def load_config(cls: type, value: str, *, method: str | None = None) -> Any:
    """``--config``: a preset name (``paper``, ``tiny``) or the path of a saved ``config.json`` (a run's record,
    or a plain config dict) to rerun a run exactly."""
    from jinterp.core import config as cfglib

    if value in cfglib.PRESETS:
        return cfglib.preset(cls, value)
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--config {value!r} is neither a preset ({', '.join(cfglib.PRESETS)}) nor a saved "
                          "config.json file; give one of those")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {path} cannot be read as JSON ({e}); give a config.json that a jinterp run "
                          "wrote, or a preset name") from e
    if isinstance(saved, dict) and "config" in saved and "stages" in saved:
        if method is not None and saved.get("method") not in (None, method):
            raise ConfigError(f"--config {path} is the config of a {saved.get('method')!r} run, not of "
                              f"{method!r}; run `jinterp {saved.get('method')} --config {path}` instead")
        saved = saved["config"]
    return cfglib.from_dict(cls, saved)


def explicit(args: Any, name: str) -> bool:
    """Whether command-line option ``--name`` may override the config: always under a preset; under a saved
    ``config.json`` only when it was typed (an option's default must not undo the saved run's value)."""
    from jinterp.core import config as cfglib

    if getattr(args, "config", None) in cfglib.PRESETS:
        return True
    argv = getattr(args, "argv", None) or []
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def config_from_args(cls: type, args: Any, *, method: str, sets: Iterable[tuple[str, str]] = ()) -> Any:
    """The config of a command: ``--config`` (preset or saved file), then the options' ``(option, "key=value")``
    pairs (see :func:`explicit`), then ``--set`` overrides."""
    from jinterp.core import config as cfglib

    cfg = load_config(cls, args.config, method=method)
    items = [item for option, item in sets if explicit(args, option)]
    return cfglib.apply_overrides(cfg, items + list(getattr(args, "overrides", []) or []))


# ------------------------------------------------------------------------------------------ backbone weights
def load_backbone_weights(path: str | Path, arch: str) -> tuple[dict, dict]:
    """``(variables, meta)`` of a saved backbone: the one place every program loads ``--weights`` through."""
    from jinterp.backbones import torch_import

    return torch_import.load_variables(path, arch)


def check_weights_fit(path: str | Path, meta: Mapping[str, Any], *, num_classes: int | None = None,
                      image_shape: tuple[int, ...] | None = None, data_spec: str = "the data",
                      same_size: bool = False) -> None:
    """What a weights file says it was trained on (its ``meta``) against the data: another number of classes
    or of image channels is a WeightsError naming both; another image size too when ``same_size``."""
    from jinterp.errors import WeightsError

    have = meta.get("num_classes")
    if num_classes is not None and have is not None and int(have) != int(num_classes):
        raise WeightsError(f"weights {path} classify {int(have)} classes but the data {data_spec} has "
                           f"{int(num_classes)}; use weights trained on this data (or data with {int(have)} classes)")
    stored = meta.get("image_shape")
    if image_shape is None or not stored or len(stored) != 3:
        return
    if int(stored[2]) != int(image_shape[2]):
        raise WeightsError(f"weights {path} take {int(stored[2])}-channel images but the data {data_spec} has "
                           f"{int(image_shape[2])} channel(s); use weights trained on such images or other data")
    if same_size and tuple(int(d) for d in stored[:2]) != tuple(int(d) for d in image_shape[:2]):
        raise WeightsError(f"weights {path} were trained on {stored[0]}x{stored[1]} images but the data is "
                           f"{image_shape[0]}x{image_shape[1]}; set the image size to {stored[0]} "
                           f"(--set image_size={stored[0]}) or use weights trained at this size")


def backbone_stage(r: Run, *, arch: str, weights: str, train_cfg: Any = None, inputs: Mapping[str, Any] | None = None,
                   prepare: Any = None, extra_paths: Iterable[str] = (), progress: bool = True
                   ) -> tuple[dict, dict, Path, dict[str, Any]]:
    """Stage ``backbone`` of a method's run: ``(variables, meta, path, info)``.

    With ``weights`` the file is loaded (its digest is the stage's input, so the stages after it recompute when
    the file changes). Without, ``train_cfg`` (a TrainBackboneConfig) is trained into ``<workdir>/backbone`` by a
    nested ``train-backbone`` run, resumable and fingerprinted like any stage; ``inputs`` describe its data
    (default: the digest of ``train_cfg.data``), ``prepare()`` writes files it reads (kept in ``extra_paths``,
    written only when missing so that a resumed training sees the same bytes).
    """
    from jinterp.core.train_backbone import PARAMS_FILE, stage_fields, train_backbone

    info: dict[str, Any] = {"arch": arch}
    if weights:
        r.stage("backbone", fields={"arch": arch, "weights": str(weights)},
                inputs={"weights": file_fingerprint(weights)}).finish()
        variables, meta = load_backbone_weights(weights, arch)
        info.update(weights=str(weights), trained_here=False)
        return variables, meta, Path(weights), info
    fields = {k: v for k, v in stage_fields(train_cfg).items() if k != "data"}
    st = r.stage("backbone", fields=fields, inputs=dict(inputs) if inputs is not None
                 else data_fingerprint(train_cfg.data), paths=["backbone", *extra_paths], resumable=True,
                 code=("jinterp.core.train_backbone", "jinterp.core.train"))
    path = r.workdir / "backbone" / PARAMS_FILE
    if not st.reusable or not path.exists():
        if prepare is not None:
            prepare()
        final = train_backbone(train_cfg, r.workdir / "backbone", progress=progress, restart=r.restart)
        info.update(trained_here=True, train_time_s=final["wall_time_s"], steps=final["step"],
                    backbone_test_accuracy=final["test_accuracy"])
        st.finish()
    else:
        info.update(trained_here=True, reused=True)
    variables, meta = load_backbone_weights(path, arch)
    info["weights"] = str(path)
    return variables, meta, path, info


def user_model_stage(r: Run, *, model: str, weights: str, image_shape: tuple[int, ...], num_classes: int | None = None,
                     data_spec: str = "the data") -> tuple[Any, dict, Any, dict[str, Any]]:
    """Stage ``backbone`` of a run on a user's model (``--model FILE.py:FACTORY``, a converted ``.npz``, or the
    ``python:<Class>@<digest>`` label of a model passed to ``run(..., model=, variables=)``, whose digest of the
    structure and variables makes it the stage's input like a file digest; :mod:`jinterp.models.given`):
    ``(model, variables, model_info, info)`` through :func:`jinterp.models.load_model` on the data's
    ``image_shape`` (H, W, C). Nothing is trained here. The model file's and the weights' digests are the
    stage's inputs, so later stages recompute when either changes.

    Rule for weights: ``FILE.py:FACTORY`` without ``weights`` runs the parameters the factory built (a factory may
    load its own checkpoint; otherwise they are its random init, which ``info["weights"]`` records as
    ``"factory"``); a saved ``.npz`` model carries its weights. With ``num_classes``, a model whose logits have
    another size is a WeightsError (the methods that read predictions compare them with the data's labels).
    """
    from jinterp.errors import ConfigError, WeightsError
    from jinterp.models import load_model


    file = model.rsplit(":", 1)[0] if ":" in model and model.rsplit(":", 1)[0].endswith(".py") else model
    if weights and file.endswith(".npz"):
        raise ConfigError(f"{model} is a saved converted model and carries its own weights; drop --weights {weights} "
                          "(or give the model as FILE.py:FACTORY with this checkpoint)")
    inputs = {"model": file_fingerprint(file) if Path(file).is_file() else file}
    if weights:
        inputs["weights"] = file_fingerprint(weights)
    r.stage("backbone", fields={"model": model, "weights": str(weights or ""),
                                "image_shape": [int(d) for d in image_shape]}, inputs=inputs).finish()
    net, variables, minfo = load_model(model, weights or None, image_shape=tuple(int(d) for d in image_shape))
    if num_classes is not None and int(minfo.num_classes) != int(num_classes):
        raise WeightsError(f"model {model} outputs {minfo.num_classes} logits but the data {data_spec} has "
                           f"{int(num_classes)} classes; give a model whose head has {int(num_classes)} outputs "
                           "(e.g. the factory's num_classes) or data with as many classes")
    info = {"model": model, "weights": str(weights) if weights else "factory", "trained_here": False,
            "normalization": minfo.normalization or "unit", "kind": minfo.kind}
    return net, dict(variables), minfo, info


__all__ = ["CONFIG_FILE", "LOCK_FILE", "Run", "Stage", "acquire_lock", "append_text", "atomic_write_text",
           "backbone_stage", "check_weights_fit", "check_workdir", "code_version", "config_from_args",
           "data_fingerprint", "explicit", "file_fingerprint", "fingerprint", "is_primary", "is_storage_oserror",
           "load_backbone_weights", "load_config", "release_lock", "storage_error", "user_model_stage",
           "write_file"]
