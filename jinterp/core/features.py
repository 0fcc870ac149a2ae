"""Activation extraction: a frozen backbone's named intermediates over a data set, jitted and batched.

Every method starts here (data -> backbone -> **features** -> method). The hot path is one jitted function of
``(variables, images)`` per (model, layers, preprocess) that returns only the requested layers, so XLA prunes the
rest of the network's outputs. Batches have one fixed shape (the last one is padded and trimmed on the host), so a
data set of any length compiles once.

For data sets larger than memory, ``cache_dir`` writes each layer to a ``.npy`` file as batches arrive and
returns read-only memory maps; a second call with the same inputs reuses the files (keyed by a fingerprint of
the variables, the layers and the images). :func:`iter_features` streams batch by batch for consumers that
reduce on the fly (dissection tallies, graph statistics).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np

from jinterp.core.run import _process_layout, is_primary, on_process_0
from jinterp.errors import ConfigError, DataError, JinterpError, LayerError, ShapeError, StorageError, WeightsError

Preprocess = Callable[[jax.Array], jax.Array]


@functools.cache
def preset(name: str) -> Preprocess:
    """The preprocess function of a normalization preset or an arch's own (one object per name, so the compiled
    extractor is reused across calls)."""
    from jinterp import backbones

    backbones.normalize(np.zeros((1, 1, 1, 1), np.uint8), name)  # unknown names fail here, clearly
    return functools.partial(backbones.normalize, arch_or_scheme=name)


def _resolve_model(model_or_arch):
    if isinstance(model_or_arch, str):
        from jinterp import backbones

        return backbones.create(model_or_arch), model_or_arch
    return model_or_arch, getattr(model_or_arch, "arch", type(model_or_arch).__name__)


def _resolve_preprocess(preprocess: Preprocess | str | None, arch: str) -> Preprocess:
    if callable(preprocess):
        return preprocess
    if preprocess is None:
        # An arch given by name brings its own normalization; a bare module gets [0, 1] pixels.
        from jinterp import backbones

        preprocess = arch if arch in backbones.ARCHS else "unit"
    return preset(preprocess)


@functools.lru_cache(maxsize=64)
def _compiled_extractor(model, layers: tuple[str, ...], preprocess: Preprocess):
    def run(variables, images):
        x = preprocess(images)
        logits, feats = model.apply(variables, x, train=False)
        feats = dict(feats)
        feats.setdefault("logits", logits)
        return {name: feats[name] for name in layers}

    return jax.jit(run)


def available_layers(model, variables, image_shape: Sequence[int]) -> tuple[str, ...]:
    """Names of the model's intermediates (plus ``logits``), found by shape evaluation (no compute).

    Variables that do not fit the model on images of ``image_shape`` (another architecture, width or number of
    classes, or images with other channels/size than the weights expect) raise :class:`WeightsError` listing
    the mismatching parameters, instead of Flax's error from inside the trace.
    """
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    try:
        logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    except JinterpError:
        raise
    except (flax.errors.FlaxError, TypeError, ValueError) as e:
        raise WeightsError(_mismatch_message(model, variables, tuple(image_shape), e)) from None
    return (*feats.keys(), "logits")


def _mismatch_message(model, variables, image_shape: tuple[int, ...], err: Exception) -> str:
    """Which variables differ from what ``model`` needs on images of ``image_shape`` (by shape evaluation)."""
    what = f"the variables do not fit {getattr(model, 'arch', type(model).__name__)} on images of shape {image_shape}"
    try:
        x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
        want = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
        flat = lambda t: {jax.tree_util.keystr(p): tuple(np.shape(v))
                          for p, v in jax.tree_util.tree_leaves_with_path(t)}
        w, h = flat(want), flat(dict(variables))
        keys = sorted(set(w) | set(h), key=lambda k: ("['params']" not in k, k))  # params first
        diffs = [f"{k}: given {h.get(k)} vs needed {w.get(k)}" for k in keys if w.get(k) != h.get(k)]
        detail = "; ".join(diffs[:4]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 4 else "")
    except Exception:  # the model cannot even be built for these images: report Flax's reason
        detail = ""
    detail = detail or str(err).strip().splitlines()[0][:300]
    return (f"{what} ({detail}). Either the weights belong to another architecture, width or number of classes "
            "(load the matching file / create the model with the same arguments), or the images differ in "
            "channels or size from the ones the weights were trained on (convert or resize them).")


def _check_images(images: np.ndarray, what: str = "images", unit_range: bool = False) -> None:
    if images.ndim != 4:
        raise ShapeError(
            f"{what} must be a 4-D NHWC array (batch, height, width, channels); got shape {images.shape}. "
            "Add a batch axis with images[None] or a channel axis with images[..., None].")
    if images.shape[0] == 0:
        raise DataError(f"{what} is empty (shape {images.shape}); pass at least one image.")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise ShapeError(f"{what} must be uint8 [0, 255] or float; got dtype {images.dtype}. "
                         "Convert with images.astype(np.float32) / 255 or keep them as uint8.")
    if not np.all(np.isfinite(images)):
        raise ShapeError(f"{what} contain NaN or Inf values; clean or drop those images before extracting.")
    if unit_range:
        lo, hi = float(images.min()), float(images.max())
        if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ShapeError(
                f"float {what} must lie in [0, 1] (the normalization presets read them as uint8 / 255); got values "
                f"in [{lo:.4g}, {hi:.4g}]. Pass uint8 images, divide 0..255 floats by 255, or give a callable "
                "preprocess= for inputs that are already normalized.")


_RANGE_TOL = 1e-3


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _check_layers(valid: Sequence[str], layers: Sequence[str]) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = [layers]
    unknown = [name for name in layers if name not in valid]
    if unknown:
        raise LayerError(f"unknown layer name(s) {unknown}; valid names: {', '.join(valid)}")
    if not layers:
        raise LayerError(f"no layers requested; valid names: {', '.join(valid)}")
    return tuple(layers)


def _batches_of(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def _padded(batch: np.ndarray, batch_size: int) -> np.ndarray:
    if len(batch) == batch_size:
        return batch
    pad = np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, pad])


def iter_features(model, variables, batches: Iterable[np.ndarray] | np.ndarray, layers: Sequence[str],
                  batch_size: int = 128, preprocess: Preprocess | str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{layer: array}`` per batch, on the host, trimmed to the batch's real length.

    Args:
      model: a backbone module (or arch name) whose ``apply(variables, x, train=False)`` returns
        ``(logits, feats)``.
      variables: its variables.
      batches: an ``(N, H, W, C)`` array, or an iterable of such arrays (a data set streamed in chunks).
      layers: names from ``jinterp.backbones.layer_names(arch)`` or ``"logits"``.
      batch_size: the fixed compiled batch; shorter batches are padded (no recompilation).
      preprocess: a traced function applied to each batch inside the jit, or a normalization preset / arch
        name (default: the arch's own normalization when ``model`` is an arch name, else uint8 -> [0, 1]).
    """
    model, arch = _resolve_model(model)
    unit = not callable(preprocess)  # the presets read float pixels as [0, 1]
    preprocess = _resolve_preprocess(preprocess, arch)
    batch_size = _check_batch_size(batch_size)
    if isinstance(batches, np.ndarray) or hasattr(batches, "shape"):
        images = np.asarray(batches)
        _check_images(images, unit_range=unit)
        chunks: Iterable[np.ndarray] = _batches_of(images, batch_size)
    else:
        chunks = batches
    fn = None
    for chunk in chunks:
        chunk = np.asarray(chunk)
        _check_images(chunk, "a batch of images", unit_range=unit)
        if fn is None:
            valid = available_layers(model, variables, chunk.shape[1:])
            names = _check_layers(valid, layers)
            fn = _compiled_extractor(model, names, preprocess)
            first_shape = chunk.shape[1:]
        elif chunk.shape[1:] != first_shape:
            raise ShapeError(f"a batch of images has shape {chunk.shape[1:]} per image but the first batch had "
                             f"{first_shape}; stream images of one size (resize them first).")
        for start in range(0, len(chunk), batch_size):
            part = chunk[start:start + batch_size]
            out = fn(variables, _padded(part, batch_size))
            yield {k: np.asarray(v[: len(part)]) for k, v in out.items()}


def _fingerprint(variables, layers: Sequence[str], images: np.ndarray, preprocess) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.asarray(leaf).tobytes())
    h.update(json.dumps(list(layers)).encode())
    h.update(str(images.shape).encode() + str(images.dtype).encode())
    h.update(hashlib.sha256(np.ascontiguousarray(images).data).digest())
    h.update(repr(preprocess).encode())
    return h.hexdigest()[:16]


def extract(model, variables, images: np.ndarray, layers: Sequence[str], batch_size: int = 128,
            preprocess: Preprocess | str | None = None, cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Activations of ``layers`` for every image: ``{layer: (N, h, w, c) or (N, d)}`` as host arrays.

    Args:
      model: a backbone module or arch name (see :func:`iter_features`).
      variables: its variables.
      images: ``(N, H, W, C)`` uint8 or float array.
      layers: layer names; an unknown name raises :class:`~jinterp.errors.LayerError` listing valid ones.
      batch_size: compiled batch size.
      preprocess: traced per-batch preprocessing or a preset name (see :func:`iter_features`).
      cache_dir: if given, features are written to ``cache_dir/<fingerprint>/<layer>.npy`` batch by batch
        (host memory stays bounded by one batch) and returned as read-only memory maps; an existing complete
        cache with the same fingerprint is reused.
    """
    model, arch = _resolve_model(model)
    unit = not callable(preprocess)
    preprocess = _resolve_preprocess(preprocess, arch)
    batch_size = _check_batch_size(batch_size)
    images = np.asarray(images)
    _check_images(images, unit_range=unit)
    names = _check_layers(available_layers(model, variables, images.shape[1:]), layers)
    if cache_dir is None:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for out in iter_features(model, variables, images, names, batch_size, preprocess):
            for k, v in out.items():
                parts[k].append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    root = Path(cache_dir) / _fingerprint(variables, names, images, preprocess)
    done = root / "complete.json"
    cached = _load_cache(root, names, len(images)) if done.exists() else None
    if _process_0_decides(cached is not None):
        return cached if cached is not None else _load_cache(root, names, len(images))
    if done.exists() and is_primary():
        done.unlink()  # a damaged cache (truncated/edited files): extract again over it
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _extract_to_cache(model, variables, images, names, batch_size, preprocess, root, arch)
    except OSError as e:
        raise StorageError(f"cannot write the feature cache under {root} ({e.strerror or e}); free disk space or "
                           "pass a writable cache_dir (or cache_dir=None to keep features in memory).") from e


def _load_cache(root: Path, names: Sequence[str], n: int) -> dict[str, np.ndarray] | None:
    """The cached memory maps, or None when a file is missing, truncated or holds the wrong number of rows."""
    try:
        out = {k: np.load(root / f"{_safe(k)}.npy", mmap_mode="r") for k in names}
    except (OSError, ValueError, EOFError):
        return None
    return out if all(len(v) == n for v in out.values()) else None


def _process_0_decides(flag: bool) -> bool:
    """``flag`` as process 0 sees it, on every process (so all take the same branch and meet at the same barriers)."""
    if _process_layout()[0] == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _extract_to_cache(model, variables, images, names, batch_size, preprocess, root: Path, arch: str):
    # Several processes: process 0 alone extracts and writes the cache (the extraction is not sharded, so the others
    # would compute the same features); they wait for it, then read it.
    on_process_0(lambda: _write_cache(model, variables, images, names, batch_size, preprocess, root, arch),
                 f"jinterp.features.cache({root})")
    return {k: np.load(root / f"{_safe(k)}.npy", mmap_mode="r") for k in names}


def _write_cache(model, variables, images, names, batch_size, preprocess, root: Path, arch: str) -> None:
    # Plain appends to .npy files (header first): a shared writable memory map would keep every written page
    # resident in this process until it ends, so peak RSS would grow with the data set.
    files: dict[str, object] = {}
    try:
        for out in iter_features(model, variables, images, names, batch_size, preprocess):
            for k, v in out.items():
                if k not in files:
                    files[k] = open(root / f"{_safe(k)}.npy", "wb")  # noqa: SIM115 (closed below)
                    header = {"descr": np.lib.format.dtype_to_descr(v.dtype), "fortran_order": False,
                              "shape": (len(images), *v.shape[1:])}
                    np.lib.format.write_array_header_1_0(files[k], header)
                files[k].write(np.ascontiguousarray(v).tobytes())
    finally:
        for f in files.values():
            f.close()
    # Written last, so an interrupted extraction is never mistaken for a complete cache.
    (root / "complete.json").write_text(json.dumps({"arch": arch, "layers": list(names), "n": len(images)}))


def _safe(name: str) -> str:
    return name.replace("/", "_")


def feature_shapes(model, variables, image_shape: Sequence[int], layers: Sequence[str]) -> Mapping[str, tuple]:
    """Per-image shapes of the requested layers, without running the network."""
    model, _ = _resolve_model(model)
    names = _check_layers(available_layers(model, variables, image_shape), layers)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    feats = dict(feats, logits=logits)
    return {k: tuple(feats[k].shape[1:]) for k in names}
