"""Typed results beside ``results.json``: one frozen dataclass per program, a JAX pytree over its arrays.

    from jinterp.methods.basis import BasisConfig, run, load_result
    res = run(BasisConfig.tiny(), "runs/basis")       # a BasisResult
    res.verdicts, res.bases["uibe@own"]["S1"]          # the top-level keys of results.json, as fields
    res.to_json() == json.load(open("runs/basis/results.json"))   # (NaN compares equal: use json_equal)
    res.arrays["bases"]["uibe@own_basis"]              # numeric arrays of the files the run saved
    same = load_result("runs/basis")                   # a finished run's results, read back
    jax.tree.map(np.shape, res)                        # the pytree's leaves are exactly the arrays

Every top-level key of a program's results file is a field (static pytree metadata: nested values stay the JSON
dicts/lists the program writes); ``arrays`` (the pytree's children) maps each array file the run saved in its
work directory (``bases.npz`` -> ``"bases"``, ``layers/relu3/cladec.npz`` -> ``"layers/relu3/cladec"``) to its
numeric arrays by key. String arrays and ``__meta__`` entries stay in the files. Fields that a program writes only
in some runs (e.g. ``metrics`` of the graph, the multi-seed keys of CSG) default to None and are left out of
:meth:`~Result.to_json` when None; a key the class does not know, or a required key missing, is an old or foreign
results file: :class:`ResultsError` names the file, and rerunning the method rewrites it.

Static fields hold dicts, so the pytree's treedef is not hashable: ``jax.tree.map``/flatten/unflatten work, but
pass ``res.arrays`` (not the result) into ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import flax.struct
import numpy as np

from jinterp.errors import JinterpError, MissingFileError


class ResultsError(JinterpError, ValueError):
    """A results file that this version of jinterp cannot read (another layout, corrupt JSON, unreadable arrays)."""


def _json(**kw):
    return flax.struct.field(pytree_node=False, **kw)


def _optional():
    return flax.struct.field(pytree_node=False, default=None)


def json_equal(a: Any, b: Any) -> bool:
    """Deep equality of JSON values, where NaN equals NaN (results hold NaN where a metric is undefined)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def to_plain_json(obj: Any) -> Any:
    """``obj`` as ``json.loads`` of its results file reads it back (numpy scalars/arrays -> Python numbers/lists)."""

    def default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The numeric arrays of an ``.npz``/``.npy`` file (``.npy``: under the key ``""``); no pickles."""
    try:
        if path.suffix == ".npy":
            found = {"": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ResultsError(f"cannot read {path} ({e}); rerun the method in this work directory to rewrite it") from e
    return {k: v for k, v in sorted(found.items()) if not k.startswith("__") and v.dtype.kind in "biuf"}


class Result:
    """Shared behaviour of the per-program result dataclasses (mixed into each ``flax.struct.dataclass``)."""

    RESULTS_FILE: ClassVar[str] = "results.json"
    # Globs, relative to the work directory, of the array files the program saves (loaded into ``arrays``).
    ARRAY_FILES: ClassVar[tuple[str, ...]] = ()
    METHOD: ClassVar[str] = ""

    @classmethod
    def _json_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name != "arrays"]

    @classmethod
    def from_json(cls, values: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]] | None = None, *,
                  source: str | Path = "results") -> Result:
        """The typed result of a results dict (as read from the JSON file). ``source`` names it in errors."""
        fields = cls._json_fields()
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        unknown = sorted(set(values) - names)
        missing = sorted(required - set(values))
        if unknown or missing:
            what = "; ".join(([f"unknown keys {unknown}"] if unknown else [])
                             + ([f"missing keys {missing}"] if missing else []))
            raise ResultsError(f"{source} is not a {cls.METHOD} results file of this jinterp version ({what}); "
                               f"rerun `jinterp {cls.METHOD}` in that work directory to rewrite it")
        return cls(**values, arrays=dict(arrays or {}))

    def to_json(self) -> dict[str, Any]:
        """The results dict, equal (:func:`json_equal`) to the program's results file."""
        out = {}
        for f in self._json_fields():
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue  # an optional key the program did not write
            out[f.name] = v
        return out

    @classmethod
    def load(cls, workdir: str | Path) -> Result:
        """Reads a finished run's results file and array files from ``workdir``."""
        workdir = Path(workdir)
        path = workdir / cls.RESULTS_FILE
        if not path.is_file():
            raise MissingFileError(f"{path} not found; run `jinterp {cls.METHOD}` with --workdir {workdir} first "
                                   "(it is written when the run finishes)")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ResultsError(f"cannot read {path} ({e}); rerun `jinterp {cls.METHOD}` in that work directory "
                               "to rewrite it") from e
        if not isinstance(values, dict):
            raise ResultsError(f"{path} does not hold a JSON object; rerun `jinterp {cls.METHOD}` in that work "
                               "directory to rewrite it")
        return cls.from_json(values, load_arrays(workdir, cls.ARRAY_FILES), source=path)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        mine, theirs = self.arrays, other.arrays  # type: ignore[attr-defined]
        return (json_equal(self.to_json(), other.to_json()) and mine.keys() == theirs.keys()
                and all(mine[f].keys() == theirs[f].keys()
                        and all(np.array_equal(mine[f][k], theirs[f][k], equal_nan=mine[f][k].dtype.kind == "f")
                                for k in mine[f]) for f in mine))

    __hash__ = None  # mutable-looking contents (dicts): not hashable, like a dict


def load_arrays(workdir: str | Path, patterns: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """``{relative path without suffix: {key: array}}`` for every file under ``workdir`` matching ``patterns``."""
    workdir = Path(workdir)
    files = sorted({p for pat in patterns for p in workdir.glob(pat) if p.is_file() and ".tmp" not in p.name})
    return {p.relative_to(workdir).with_suffix("").as_posix(): _read_arrays(p) for p in files}


# ------------------------------------------------------------------------------------------------ per program
@flax.struct.dataclass(eq=False)
class ExplainerResult(Result):
    """``jinterp explainer``'s results.json (no array files: the explainer's parameters live in its checkpoints)."""

    METHOD: ClassVar[str] = "explainer"

    method: str = _json()
    arch: str = _json()
    data: str = _json()
    layer: str = _json()
    target: str = _json()
    in_shape: list = _json()
    out_shape: list = _json()
    filters: int = _json()
    steps: int = _json()
    resumed_from: int = _json()
    lam: float = _json()
    eta: float = _json()
    surrogate: Any = _json()
    faithful: bool = _json()
    randomize_backbone: bool = _json()
    performer: dict = _json()
    performer_unchanged: bool = _json()
    beta_mean: dict = _json()
    relative_error: float = _json()
    relative_error_pooled: float = _json()
    p_mean: float = _json()
    p_std: float = _json()
    p_quantiles: dict = _json()
    train_curve: list = _json()
    sweep: list = _json()
    figures: dict = _json()
    times: dict = _json()
    devices: int = _json()
    backend: str = _json()
    # only with a classifier head on the performer / with the instability evaluation
    accuracy: float | None = _optional()
    accuracy_replaced: float | None = _optional()
    accuracy_drop: float | None = _optional()
    prediction_agreement: float | None = _optional()
    instability: dict | None = _optional()
    instability_baselines: dict | None = _optional()
    filter_diversity: dict | None = _optional()
    randomization_check: dict | None = _optional()
    arrays: dict = flax.struct.field(default_factory=dict)


@flax.struct.dataclass(eq=False)
class GraphResult(Result):
    """``jinterp graph``'s results.json; ``arrays["graph"]`` holds graph.npz (per layer: node coordinates,
    sigmas, records, parents)."""

    METHOD: ClassVar[str] = "graph"
    ARRAY_FILES: ClassVar[tuple[str, ...]] = ("graph.npz",)

    method: str = _json()
    config: dict = _json()
    weights: Any = _json()
    data: str = _json()
    category: str = _json()
    num_images: int = _json()
    randomize_backbone: bool = _json()
    layers: list = _json()
    graph_file: str = _json()
    warnings: list = _json()
    times: dict = _json()
    metrics: dict | None = _optional()  # or metrics_not_computed, when the data have no part landmarks
    metrics_not_computed: dict | None = _optional()
    figures: dict | None = _optional()  # or figures_error
    figures_error: str | None = _optional()
    randomization_check: dict | None = _optional()
    arrays: dict = flax.struct.field(default_factory=dict)


@flax.struct.dataclass(eq=False)
class BasisResult(Result):
    """``jinterp basis``'s results.json; ``arrays["bases"]`` holds bases.npz (per basis: directions, mean, scale,
    thresholds and IoU per direction; the direction labels, strings, stay in the file)."""

    METHOD: ClassVar[str] = "basis"
    ARRAY_FILES: ClassVar[tuple[str, ...]] = ("bases.npz",)

    arch: str = _json()
    layer: str = _json()
    data: str = _json()
    channels: int = _json()
    n_train: int = _json()
    n_test: int = _json()
    fit_pixels: int = _json()
    concepts: int = _json()
    backbone: dict = _json()
    bases: dict = _json()
    verdicts: dict = _json()
    figures: dict = _json()
    wall_times_s: dict = _json()
    config: dict = _json()
    randomize_backbone: bool | None = _optional()
    randomization_check: dict | None = _optional()
    arrays: dict = flax.struct.field(default_factory=dict)


@flax.struct.dataclass(eq=False)
class ClaDecResult(Result):
    """``jinterp cladec``'s results.json; ``arrays["layers/<layer>/<decoder>"]`` hold the trained decoder and
    RefAE parameters (flattened ``params/...`` keys)."""

    METHOD: ClassVar[str] = "cladec"
    ARRAY_FILES: ClassVar[tuple[str, ...]] = ("layers/**/*.npz",)

    method: str = _json()
    arch: str = _json()
    data: str = _json()
    image_shape: list = _json()
    train_size: int = _json()
    test_size: int = _json()
    layers: dict = _json()
    backbone: dict = _json()
    alphas: list = _json()
    faithful: bool = _json()
    retrain_protocol: str | None = _json()
    figures: dict = _json()
    wall_times_s: dict = _json()
    config: dict = _json()
    device: str = _json()
    randomize_backbone: bool | None = _optional()
    randomization_check: dict | None = _optional()
    arrays: dict = flax.struct.field(default_factory=dict)


@flax.struct.dataclass(eq=False)
class CSGResult(Result):
    """``jinterp csg``'s results.json; ``arrays`` holds ``gate`` (filters × classes) and the ``csg_params`` /
    ``baseline_params`` variables (flattened keys). With ``seeds > 1`` the top work directory holds the mean/std
    over seeds and no array files (each ``seed_<s>/`` is a CSG result of its own)."""

    METHOD: ClassVar[str] = "csg"
    ARRAY_FILES: ClassVar[tuple[str, ...]] = ("gate.npy", "csg_params.npz", "baseline_params.npz")

    data: str = _json()
    arch: str = _json()
    backbone: Any = _json()
    gate_layer: str = _json()
    num_filters: int = _json()
    num_classes: int = _json()
    eval_size: int = _json()
    protocol_note: str = _json()
    models: dict = _json()
    training: dict = _json()
    issue6_observation: Any = _json()
    figures: dict = _json()
    times: dict = _json()
    # with seeds > 1
    models_std: dict | None = _optional()
    seeds: list | None = _optional()
    per_seed_results: list | None = _optional()
    verdicts: dict | None = _optional()
    randomize_backbone: bool | None = _optional()
    randomization_check: dict | None = _optional()
    arrays: dict = flax.struct.field(default_factory=dict)


@flax.struct.dataclass(eq=False)
class TrainBackboneResult(Result):
    """``jinterp train-backbone``'s final_metrics.json; ``arrays["params"]`` holds params.npz (the trained
    variables, flattened ``params/...`` and ``batch_stats/...`` keys)."""

    RESULTS_FILE: ClassVar[str] = "final_metrics.json"
    METHOD: ClassVar[str] = "train-backbone"
    ARRAY_FILES: ClassVar[tuple[str, ...]] = ("params.npz",)

    arch: str = _json()
    data: str = _json()
    step: int = _json()
    steps: int = _json()
    resumed_from: int = _json()
    test_accuracy: float = _json()
    test_loss: float = _json()
    test_count: float = _json()
    num_classes: int = _json()
    image_shape: list = _json()
    devices: int = _json()
    wall_time_s: float = _json()
    params: str = _json()
    arrays: dict = flax.struct.field(default_factory=dict)


def finished(cls: type[Result], values: dict[str, Any], workdir: str | Path) -> Result:
    """The typed result of a run that just returned ``values`` (and wrote its files into ``workdir``)."""
    workdir = Path(workdir)
    return cls.from_json(to_plain_json(values), load_arrays(workdir, cls.ARRAY_FILES),
                         source=workdir / cls.RESULTS_FILE)
