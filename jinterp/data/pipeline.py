"""Input pipeline: seeded per-epoch shuffling, fixed-shape batches, device sharding, prefetch, resumable.

Host side (:class:`BatchIterator`): the dataset stays in host memory as uint8; each batch is gathered with one
fancy index per array, padded to the batch size (``batch["mask"]`` marks real rows), and put on the devices,
sharded along the batch axis over the ``data`` axis of a :class:`jax.sharding.Mesh` (or on one device), a few
batches ahead in a background thread.

Device side (:func:`preprocess`, :func:`normalize`, :func:`augment`): pure, jittable functions a training step
calls on the uint8 batch, so the uint8 -> float32 conversion happens on the device (4x less transfer).

Resuming: ``it.position()`` is the :class:`Position` ``(epoch, step)`` of the next batch ``it`` will yield;
``BatchIterator(dataset, ..., position=pos)`` (same dataset, batch size and seed) yields exactly the batches
the original would have yielded from there on. Epoch ``e`` visits ``jax.random.permutation(fold_in(key(seed),
e), N)``.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jinterp.data.dataset import Dataset
from jinterp.errors import ConfigError, ShapeError

# (mean, std) of [0, 1]-scaled pixels, per channel.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The shared CIFAR ResNet-20 (akamaster/pytorch_resnet_cifar10) was trained with ImageNet statistics.
    "cifar": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The CIFAR-10 training-set statistics most CIFAR code uses.
    "cifar10_stats": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
    # CSAIL Places365 weights as NetDissect-Lite / IBD feed them (feature_operation.py): the BGR mean
    # (109.5388, 118.6897, 124.6901) subtracted from 0..255 pixels, then divided by 255 * 0.224 -- in RGB order
    # and [0, 1] units that is this mean and one std for all channels.
    "places365": ((124.6901 / 255, 118.6897 / 255, 109.5388 / 255), (0.224, 0.224, 0.224)),
    "unit": ((0.0,), (1.0,)),  # plain [0, 1]
}
RESERVED_KEYS = ("image", "label", "mask", "index", "landmarks", "landmark_visible")


# ------------------------------------------------------------------------------------------------ device side
def standardize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``(..., H, W, C)`` uint8 in [0, 255] or float in [0, 1] -> float32 ``(x - mean) / std`` on [0, 1] pixels.

    The one place jinterp normalizes images. RGB statistics on one-channel images use their channel means.
    """
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        raise ShapeError(f"images of shape {tuple(images.shape)} are NCHW (channels first); jinterp takes NHWC: "
                         "pass images.transpose(0, 2, 3, 1)")
    c = images.shape[-1]
    if mean.size not in (1, c):
        if c != 1:
            raise ShapeError(f"normalization statistics have {mean.size} channels, images have {c}; convert the "
                             f"images to {mean.size} channels (or grayscale) or pick a matching normalization")
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) * np.float32(1 / 255) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    return (x - mean) / std


def normalize(images: jax.Array, preset: str = "imagenet") -> jax.Array:
    """:func:`standardize` with the statistics of a preset of :data:`NORMALIZATIONS`."""
    if preset not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {preset!r}; use one of {sorted(NORMALIZATIONS)}")
    return standardize(images, *NORMALIZATIONS[preset])


def _flip_crop(img, pad_value, flip, dy, dx, pad):
    """One example (H, W[, C]): optional left-right flip, then a crop at (dy, dx) of the image padded by pad."""
    img = jnp.where(flip, img[:, ::-1], img)
    if pad:
        widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (img.ndim - 2)
        padded = jnp.pad(img, widths, constant_values=pad_value)
        img = jax.lax.dynamic_slice(padded, (dy, dx) + (0,) * (img.ndim - 2), img.shape)
    return img


def augment(batch: dict, key: jax.Array, *, flip: bool = True, crop_pad: int = 0,
            map_keys: Sequence[str] = ()) -> dict:
    """Random left-right flip (p = 1/2) and random crop after zero padding by ``crop_pad``, per example.

    The same transform is applied to ``batch["image"]`` (B, H, W, C), to the label maps named in ``map_keys``
    (B, H, W) (padded with 0 = unlabelled) and, if present, to ``landmarks`` (B, P, 2) (x -> W - x under a flip;
    landmarks moved out of the frame become invisible). Jittable; ``flip``/``crop_pad``/``map_keys`` are static.
    """
    img = batch["image"]
    b, h, w = img.shape[:3]
    kf, kc = jax.random.split(key)
    do_flip = jax.random.bernoulli(kf, 0.5, (b,)) if flip else jnp.zeros((b,), bool)
    off = jax.random.randint(kc, (b, 2), 0, 2 * crop_pad + 1) if crop_pad else jnp.zeros((b, 2), jnp.int32)
    fn = jax.vmap(functools.partial(_flip_crop, pad=crop_pad), in_axes=(0, None, 0, 0, 0))
    out = dict(batch)
    out["image"] = fn(img, 0, do_flip, off[:, 0], off[:, 1])
    for k in map_keys:
        out[k] = fn(batch[k], 0, do_flip, off[:, 0], off[:, 1])
    if "landmarks" in batch:
        lm = batch["landmarks"]
        x = jnp.where(do_flip[:, None], w - lm[..., 0], lm[..., 0]) - off[:, 1, None] + crop_pad
        y = lm[..., 1] - off[:, 0, None] + crop_pad
        out["landmarks"] = jnp.stack([x, y], -1)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        out["landmark_visible"] = batch["landmark_visible"] & inside
    return out


def preprocess(batch: dict, key: jax.Array | None = None, *, normalization: str = "imagenet",
               flip: bool = False, crop_pad: int = 0, map_keys: Sequence[str] = ()) -> dict:
    """Augments (when ``key`` is given and flip/crop_pad ask for it) and normalizes ``batch["image"]``.

    Meant to run inside the jitted step: ``image`` goes in uint8 (B, H, W, C) and comes out float32.
    """
    if key is not None and (flip or crop_pad):
        batch = augment(batch, key, flip=flip, crop_pad=crop_pad, map_keys=tuple(map_keys))
    return {**batch, "image": normalize(batch["image"], normalization)}


# ------------------------------------------------------------------------------------------------ host side
@dataclasses.dataclass(frozen=True)
class Position:
    """Where an iterator stands: the next batch is batch ``step`` of epoch ``epoch`` (both 0-based)."""

    epoch: int = 0
    step: int = 0

    def to_dict(self) -> dict[str, int]:
        """Plain ints, for checkpoints (``Position(**d)`` restores)."""
        return {"epoch": int(self.epoch), "step": int(self.step)}


def data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with one data axis."""
    devs = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devs, (axis,))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: a permutation keyed by ``fold_in(key(seed), epoch)``."""
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return np.asarray(jax.random.permutation(key, n))


class BatchIterator(Iterator[dict]):
    """Fixed-shape, sharded, resumable batches of a :class:`Dataset`.

    Each batch is a dict of device arrays with leading axis ``batch_size``:
      ``image`` uint8 (B, H, W, C); ``label`` int32 (B,); ``mask`` bool (B,) (False on padding rows, which are
      all-zero); ``index`` int32 (B,) dataset index (-1 on padding); one int32 (B, H, W) entry per requested
      label map (``masks=("part", ...)``); one int32 (B,) entry per requested image label; ``landmarks``
      float32 (B, P, 2) and ``landmark_visible`` bool (B, P) when ``landmarks=True``.

    Args:
      dataset: the data.
      batch_size: global batch size; must divide by the number of devices on the mesh's data axis.
      seed: shuffling seed (epoch e uses ``fold_in(key(seed), e)``).
      shuffle: False visits examples in order (evaluation).
      drop_remainder: drop the last partial batch of each epoch instead of padding it.
      num_epochs: stop after this many epochs (None: never stop).
      masks, image_labels: names of ``dataset.masks`` / ``dataset.image_labels`` to include.
      landmarks: include ``landmarks`` and ``landmark_visible``.
      mesh: a Mesh with axis ``data_axis``; batches are sharded ``P(data_axis)`` over it. None: one device (on
        several processes: :func:`data_mesh` over all of them). With ``jax.process_count() > 1`` each process reads
        and decodes only its contiguous block of every global batch (see ``_local_rows``).
      prefetch: batches prepared ahead in a background thread (0: synchronous).
      position: start here (from :meth:`position` of an earlier iterator).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_remainder: bool = False, num_epochs: int | None = None, masks: Sequence[str] = (),
                 image_labels: Sequence[str] = (), landmarks: bool = False, mesh: Mesh | None = None,
                 data_axis: str = "data", prefetch: int = 2, position: Position | dict | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if drop_remainder and batch_size > len(dataset):
            raise ConfigError(f"batch_size {batch_size} > {len(dataset)} examples with drop_remainder=True "
                              "would yield no batch")
        for kind, names, have in (("mask", masks, dataset.masks), ("image label", image_labels,
                                                                   dataset.image_labels)):
            for m in names:
                if m not in have:
                    raise ConfigError(f"{kind} {m!r} is not in dataset {dataset.name!r} (it has {sorted(have)})")
                if m in RESERVED_KEYS:
                    raise ConfigError(f"{kind} name {m!r} collides with a batch key {RESERVED_KEYS}")
        if landmarks and dataset.landmarks is None:
            raise ConfigError(f"dataset {dataset.name!r} has no landmarks")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.drop_remainder, self.num_epochs = drop_remainder, num_epochs
        self.masks, self.image_labels, self.landmarks = tuple(masks), tuple(image_labels), landmarks
        self.sharding = self._sharding(mesh, data_axis, batch_size)
        self.prefetch = prefetch
        pos = Position(**position) if isinstance(position, dict) else (position or Position())
        if pos.epoch < 0 or not 0 <= pos.step <= self.steps_per_epoch:
            raise ConfigError(f"position {pos} is outside the data: {self.steps_per_epoch} steps per epoch")
        if pos.step == self.steps_per_epoch:  # the end of an epoch is the start of the next
            pos = Position(pos.epoch + 1, 0)
        self._pos = pos
        self._thread = self._queue = self._stop = None

    @staticmethod
    def _sharding(mesh, axis, batch_size):
        if mesh is None and jax.process_count() > 1:  # several hosts: the batch spans every process's devices
            mesh = data_mesh()
        if mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        if axis not in mesh.axis_names:
            raise ConfigError(f"the mesh has axes {mesh.axis_names}, no data axis {axis!r}")
        n = mesh.shape[axis]
        if batch_size % n:
            raise ShapeError(f"batch_size {batch_size} must be divisible by the {n} devices on mesh axis "
                             f"{axis!r}; use a multiple of {n} (e.g. {max(n, batch_size // n * n)})")
        return NamedSharding(mesh, PartitionSpec(axis))

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def position(self) -> Position:
        """The position of the next batch this iterator yields."""
        return self._pos

    # --- production -------------------------------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        return epoch_permutation(self.seed, epoch, n) if self.shuffle else np.arange(n)

    def _local_rows(self) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of each global batch this process reads: all of them on one host; on several
        (``jax.process_count() > 1``) a contiguous block of ``batch_size / process_count`` per process, in
        ``jax.process_index()`` order -- the block the process's devices hold when the mesh lists devices by process
        (as :func:`data_mesh` does)."""
        count, index = jax.process_count(), jax.process_index()
        if count == 1:
            return 0, self.batch_size
        if self.batch_size % count:
            raise ConfigError(f"batch_size {self.batch_size} must be divisible by the {count} processes; use a "
                              f"multiple of {count}")
        per = self.batch_size // count
        return index * per, (index + 1) * per

    def _host_batch(self, order: np.ndarray, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step`` (all rows on one host), padded with zeros past the data."""
        ds, b = self.dataset, self.batch_size
        idx = order[step * b: (step + 1) * b]
        lo, hi = self._local_rows()
        rows = np.arange(lo, hi)
        valid = rows < len(idx)
        take = idx[rows[valid]]
        real, width = len(take), hi - lo
        pad = lambda a: a if real == width else np.concatenate([a, np.zeros((width - real, *a.shape[1:]), a.dtype)])
        out = {
            "image": pad(ds.images[take]),
            "label": pad(ds.labels[take]),
            "mask": valid,
            "index": np.concatenate([take, np.full(width - real, -1)]).astype(np.int32),
        }
        for m in self.masks:
            out[m] = pad(ds.masks[m][take].astype(np.int32))
        for m in self.image_labels:
            out[m] = pad(ds.image_labels[m][take])
        if self.landmarks:
            out["landmarks"] = pad(ds.landmarks[take])
            out["landmark_visible"] = pad(ds.landmark_visible[take])
        return out

    def _to_devices(self, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """One host: ``device_put``. Several: each process contributes its rows and the global batch is assembled
        with ``jax.make_array_from_process_local_data`` (no process ever holds the whole batch)."""
        if jax.process_count() == 1:
            return jax.device_put(host, self.sharding)
        return {k: jax.make_array_from_process_local_data(self.sharding, v, (self.batch_size, *v.shape[1:]))
                for k, v in host.items()}

    def _produce(self, start: Position):
        """Yields (position after, device batch) from ``start`` on."""
        epoch, step = start.epoch, start.step
        while self.num_epochs is None or epoch < self.num_epochs:
            order = self._order(epoch)
            for s in range(step, self.steps_per_epoch):
                nxt = Position(epoch, s + 1) if s + 1 < self.steps_per_epoch else Position(epoch + 1, 0)
                yield nxt, self._to_devices(self._host_batch(order, s))
            epoch, step = epoch + 1, 0

    def _worker(self, start, q, stop):
        try:
            for item in self._produce(start):
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as e:  # hand errors to the consumer instead of dying silently
            q.put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.prefetch <= 0:
            if self._thread is None:
                self._thread = self._produce(self._pos)
            item = next(self._thread)
        else:
            if self._thread is None:
                self._queue, self._stop = queue.Queue(self.prefetch), threading.Event()
                self._thread = threading.Thread(target=self._worker, args=(self._pos, self._queue, self._stop),
                                                daemon=True)
                self._thread.start()
            item = self._queue.get()
            if item is None:
                self._queue.put(None)
                raise StopIteration
            if isinstance(item, BaseException):
                raise item
        self._pos, batch = item
        return batch

    def close(self) -> None:
        """Stops the prefetch thread (the iterator can still be resumed from :meth:`position`)."""
        if isinstance(self._thread, threading.Thread):
            self._stop.set()
            self._thread.join(timeout=5)
        self._thread = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def batches(dataset: Dataset, batch_size: int, **kw) -> BatchIterator:
    """Shorthand for :class:`BatchIterator`."""
    return BatchIterator(dataset, batch_size, **kw)
