"""A converted model in one torch-free file: ``save_model`` / ``load_saved_model``.

The file is an ``.npz`` (read with ``allow_pickle=False``): one array per variable, keyed by its path joined with
``/`` (``params/layer1.0.conv1/kernel``), plus ``__meta__``: UTF-8 JSON with ``format`` (``jinterp.model/1``), the
converted graph (see ``graph.py``) and the caller's metadata (num_classes, image_shape, source…). Loading needs
numpy, JAX and Flax only.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp.errors import ConfigError, MissingFileError, WeightsError
from jinterp.models.graph import TorchGraph

FORMAT = "jinterp.model/1"
META_KEY = "__meta__"


def save_model(path, model: TorchGraph, variables: Mapping, meta: Mapping | None = None) -> Path:
    """Write ``model`` (a converted PyTorch graph) and ``variables`` to ``path`` (atomically: a temporary name,
    then a rename). ``meta`` must be JSON-serializable."""
    if not isinstance(model, TorchGraph):
        raise ConfigError(f"save_model stores converted PyTorch models (TorchGraph), not {type(model).__name__}; "
                          "for a Flax module save its variables and rebuild it from your code")
    full = {"format": FORMAT, "kind": "torchgraph", "graph": model.graph_json, **dict(meta or {})}
    from jinterp.backbones.torch_import import write_npz_with_meta

    return write_npz_with_meta(path, variables, full, who="save_model")


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (CRC-checked), or a ``WeightsError`` naming the file; never unpickles."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a directory; give the weights file inside it (e.g. {path}/params.npz)")
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        if "Object arrays" in str(e):  # never advise allow_pickle: unpickling a downloaded file runs its code
            raise WeightsError(f"{path} holds pickled Python objects, which jinterp does not load; save plain "
                               "arrays (numpy.savez) or use jinterp's save_variables") from None
        raise WeightsError(f"{path} is corrupt or truncated (not a jinterp variables .npz: {type(e).__name__}); "
                           "re-create or re-download it") from None


def load_saved_model(path) -> tuple[TorchGraph, dict, dict]:
    """``(model, variables, meta)`` from a file written by :func:`save_model`; no PyTorch needed."""
    arrays = read_npz(path)
    if META_KEY not in arrays:
        raise WeightsError(f"{path} has no {META_KEY!r} entry: not a model saved by jinterp.models.save_model")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: unreadable meta entry: {e}") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is a {meta.get('format', 'jinterp variables')!r} file, not a saved model "
                           f"({FORMAT}); load it with jinterp.models.load_weights")
    model = TorchGraph(meta.pop("graph"))
    variables = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in arrays.items()})
    return model, variables, meta
