"""One weights loader for every program: PyTorch ``.pth/.pt/.th`` state dicts, ``.safetensors``, jinterp ``.npz``.

``load_weights(path, arch)`` returns ``(variables, meta)`` for a built-in arch, whatever the file's format:

* jinterp ``.npz`` (``save_variables``): read as is (``allow_pickle=False``).
* PyTorch checkpoints (zip or legacy pickle; any suffix — the content decides): read with
  ``torch.load(weights_only=True)`` only; ``{"state_dict": …}`` wrappers and DataParallel ``module.`` prefixes are
  unwrapped. A file that holds pickled Python objects beyond tensors is refused (unpickling runs code).
* ``.safetensors``: read natively (:func:`read_safetensors`; no extra package).
* a plain ``.npz`` of arrays named like the PyTorch state dict (``layer1.0.conv1.weight``) or like jinterp's
  variables (``params/layer1_0/conv1/kernel``).

PyTorch and safetensors files are converted once and cached as a jinterp ``.npz`` in the cache directory
(``$JINTERP_CACHE_DIR``, else ``$XDG_CACHE_HOME/jinterp``, else ``~/.cache/jinterp``) under
``converted/<arch>-<sha256 of the file, 16 hex>.npz``; an unwritable cache only costs the conversion next time.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import traverse_util

from jinterp.errors import MissingFileError, WeightsError

TORCH_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".ckpt", ".tar")


def cache_dir() -> Path:
    """Where converted checkpoints are cached (see the module docstring)."""
    if os.environ.get("JINTERP_CACHE_DIR"):
        return Path(os.environ["JINTERP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jinterp"


def _check_path(path) -> Path:
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (*TORCH_SUFFIXES, ".npz", ".safetensors"))
        hint = f" (it holds {', '.join(inside[:5])})" if inside else ""
        raise WeightsError(f"--weights {path} is a directory{hint}; give the weights file itself, e.g. "
                           f"{path / (inside[0] if inside else 'params.npz')}")
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    return path


def detect_format(path) -> str:
    """``"npz"``, ``"torch"``, ``"safetensors"`` or ``"unknown"``, from the file's content (then its suffix)."""
    path = _check_path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "npz" if path.suffix == ".npz" else ("torch" if path.suffix in TORCH_SUFFIXES else "unknown")
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz"
    if head[:1] == b"\x80":  # a pickle protocol header: PyTorch's legacy (pre-1.6) format
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # 8-byte little-endian header length, then JSON
        return "safetensors"
    if path.suffix == ".npz":
        return "npz"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    if path.suffix == ".safetensors":
        return "safetensors"
    return "unknown"


def _unwrap(src, path) -> dict[str, np.ndarray]:
    if not isinstance(src, Mapping):
        raise WeightsError(f"{path} holds a {type(src).__name__}, not a state_dict (a mapping of name -> tensor); "
                           "save it with torch.save(model.state_dict(), path)")
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if wrapper in src and isinstance(src[wrapper], Mapping):
            src = src[wrapper]
            break
    out = {}
    for key, value in src.items():
        key = str(key)
        while key.startswith("module."):  # nn.DataParallel / DistributedDataParallel wrappers
            key = key[len("module."):]
        if key.endswith("num_batches_tracked"):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            value = value.float().numpy() if value.is_floating_point() else value.numpy()
        if not isinstance(value, np.ndarray):
            continue  # epoch counters, accuracies… beside the tensors
        out[key] = value
    if not out:
        raise WeightsError(f"{path} holds no tensors; expected a state_dict")
    return out


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A checkpoint's state dict as numpy arrays (PyTorch, safetensors or a plain npz), unwrapped; see above."""
    path = _check_path(path)
    fmt = detect_format(path)
    if fmt == "torch":
        try:
            import torch
        except ImportError:
            raise WeightsError(f"reading the PyTorch checkpoint {path} needs PyTorch (pip install "
                               "'jinterp[torch]'), or convert it where PyTorch is and copy the .npz") from None
        try:
            src = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types; all mean "cannot read safely"
            text = str(e)
            if "Unsupported global" in text or "GLOBAL" in text:  # classes beyond tensors, not damage
                raise WeightsError(
                    f"{path} holds pickled Python objects besides tensors (e.g. a whole model), which jinterp "
                    "does not unpickle; in PyTorch save the weights alone: torch.save(model.state_dict(), "
                    "'weights.pth')") from None
            raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}); check that "
                               "the download completed (compare its size or hash with the source)") from None
        return _unwrap(src, path)
    if fmt == "safetensors":
        return _unwrap(read_safetensors(path), path)
    if fmt == "npz":
        from jinterp.models.serialize import read_npz

        return _unwrap({k: v for k, v in read_npz(path).items() if k != "__meta__"}, path)
    raise WeightsError(f"{path}: unknown weights format; give a PyTorch state dict (.pth/.pt/.th), a "
                       ".safetensors file or a jinterp .npz")


# safetensors dtypes -> numpy; F16/BF16/F64 become float32 below, as ``.float()`` does for PyTorch checkpoints.
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_FIX = "re-save it (safetensors.torch.save_file(model.state_dict(), path)) or check that the download completed"


def read_safetensors(path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file, read without the ``safetensors`` package.

    Layout (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw
    little-endian buffer the offsets index. Floating tensors come back as float32 (BF16 exactly, by shifting its
    16 bits into the high half of a float32), like PyTorch checkpoints; integers keep their type. A damaged file
    (short header, offsets outside the buffer, a size that does not fit the shape) is a one-line WeightsError.
    """
    import json

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors file: {size} bytes, shorter than its 8-byte header "
                               f"length; {_ST_FIX}")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise WeightsError(f"{path} is truncated: its header claims {n} bytes but the file has {size - 8} after "
                               f"the length; {_ST_FIX}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path} has an unreadable safetensors header ({type(e).__name__}); {_ST_FIX}"
                               ) from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a safetensors header that is not a JSON object; {_ST_FIX}")
    buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets in the header; {_ST_FIX}"
                               ) from None
        if dtype not in _ST_DTYPES:
            raise WeightsError(f"{path}: tensor {name!r} has dtype {dtype}, which jinterp does not read (it reads "
                               f"{', '.join(_ST_DTYPES)}); save it as float32")
        np_dtype = np.dtype(_ST_DTYPES[dtype])
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(buffer) or end - begin != count * np_dtype.itemsize:
            raise WeightsError(f"{path}: tensor {name!r} ({dtype} {shape}) has data_offsets [{begin}, {end}] that do "
                               f"not fit its shape or the {len(buffer)}-byte buffer (truncated?); {_ST_FIX}")
        raw = np.frombuffer(buffer[begin:end], dtype=np_dtype.newbyteorder("<"), count=count).reshape(shape)
        if dtype == "BF16":
            value = (raw.astype(np.uint32) << 16).view(np.float32)
        elif np_dtype.kind == "f":
            value = raw.astype(np.float32)
        else:
            value = raw.astype(np_dtype.newbyteorder("="))
        out[name] = np.array(value)  # own the memory: the memmap closes with this function
    return out


def nearest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.4)
    return f"{name!r} (nearest: {close[0]!r})" if close else repr(name)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_weights(path, arch: str | None = None) -> tuple[dict, dict]:
    """``(variables, meta)`` for the built-in ``arch`` from any supported file (module docstring).

    ``meta`` has ``arch``, ``num_classes``, ``normalization`` and, for converted checkpoints, ``source``,
    ``sha256``, ``converted_from`` and ``image_shape``. Raises ``MissingFileError`` / ``WeightsError`` with
    the fix: a directory, an unreadable file, keys that do not match ``arch`` (listing a few, with the nearest
    expected name).
    """
    from jinterp.backbones import torch_import

    path = _check_path(path)
    fmt = detect_format(path)
    if fmt == "npz":
        return _load_npz(path, arch)
    if arch is None:
        raise WeightsError(f"{path} is a {fmt} checkpoint: give the architecture it belongs to (--arch, e.g. "
                           "resnet20) so its tensors can be matched by name")
    digest = file_sha256(path)
    cached = cache_dir() / "converted" / f"{arch}-{digest[:16]}.npz"
    if cached.is_file():
        try:
            return torch_import.load_variables(cached, arch)
        except WeightsError:
            pass  # a damaged cache entry: convert again below
    sd = read_state_dict(path)
    variables = torch_import.from_torch(arch, sd, source=str(path))
    meta = _meta_for(arch, variables, {"source": path.name, "sha256": digest, "converted_from": fmt})
    try:
        torch_import.save_variables(cached, variables, meta)
    except OSError as e:
        warnings.warn(f"could not cache the converted {path.name} in {cached.parent} ({e}); set "
                      "JINTERP_CACHE_DIR to a writable folder to convert it only once", stacklevel=2)
    return variables, meta


def _meta_for(arch: str, variables: Mapping, extra: Mapping) -> dict:
    from jinterp.backbones import registry

    flat = traverse_util.flatten_dict(dict(variables["params"]))
    kernels = [v for k, v in flat.items() if k[-1] == "kernel" and np.ndim(v) == 4]
    biases = [v for k, v in flat.items() if k[-1] == "bias"]
    h, w, c = registry.default_input_shape(arch)
    if kernels:
        c = int(np.shape(kernels[0])[2])
    return {"arch": arch, "num_classes": int(np.shape(biases[-1])[0]) if biases else None,
            "image_shape": [h, w, c], "normalization": registry.NORMALIZATION[arch], **extra}


def _load_npz(path: Path, arch: str | None) -> tuple[dict, dict]:
    from jinterp.backbones import registry, torch_import
    from jinterp.models.serialize import META_KEY, read_npz

    arrays = read_npz(path)
    if META_KEY in arrays:
        return torch_import.read_jinterp_npz(path, arrays, arch)
    if arch is None:
        raise WeightsError(f"{path} has no '__meta__' entry (not written by jinterp's save_variables); give "
                           "--arch so its arrays can be matched by name")
    if any("/" in k for k in arrays):  # jinterp variable paths without meta
        shapes = registry.variable_shapes(registry.create(arch, _num_classes_of(arch, arrays)),
                                          registry.default_input_shape(arch))
        want = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}
        missing = sorted(set(want) - set(arrays))
        unexpected = sorted(set(arrays) - set(want))
        if missing or unexpected:
            raise WeightsError(
                f"{path} does not hold {arch}'s variables: expected {len(want)} arrays, found {len(arrays)}; "
                f"missing {', '.join(nearest(k, unexpected) for k in missing[:3])}"
                f"{'…' if len(missing) > 3 else ''}; unexpected {', '.join(repr(k) for k in unexpected[:3])}"
                f"{'…' if len(unexpected) > 3 else ''}. Check --arch, or save it with "
                "jinterp.backbones.torch_import.save_variables")
        variables = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in arrays.items()})
        import jax.numpy as jnp

        variables = {k: traverse_util.unflatten_dict({p: jnp.asarray(a) for p, a in
                                                      traverse_util.flatten_dict(v).items()})
                     for k, v in variables.items()}
        return variables, _meta_for(arch, variables, {"source": path.name})
    sd = _unwrap(arrays, path)  # a state dict stored as npz (PyTorch names)
    expected = list(torch_import.name_map(arch, num_classes=torch_import._num_classes_from(arch, sd)))
    if not set(sd) & set(expected):
        found = sorted(sd)
        raise WeightsError(
            f"{path} has no '__meta__' entry (not written by jinterp's save_variables) and none of its arrays is "
            f"named like {arch}'s: expected {len(expected)} keys like {', '.join(expected[:3])}, found "
            f"{len(found)}: {', '.join(nearest(k, expected) for k in found[:3])}{'…' if len(found) > 3 else ''}. "
            "Write it with jinterp's save_variables, or give the PyTorch state dict (.pth) it came from")
    variables = torch_import.from_torch(arch, sd, source=str(path))
    return variables, _meta_for(arch, variables, {"source": path.name, "converted_from": "npz"})


def _num_classes_of(arch: str, arrays: Mapping) -> int | None:
    from jinterp.backbones import registry

    module, leaf = registry.spec(arch).head.rsplit(".", 1)  # "classifier.6.bias" -> params/classifier_6/bias
    parts: list[str] = []
    for p in module.split("."):
        if p.isdigit() and parts:
            parts[-1] += f"_{p}"
        else:
            parts.append(p)
    a = arrays.get("/".join(["params", *parts, leaf]))
    return int(a.shape[0]) if a is not None else None
