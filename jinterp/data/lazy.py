"""Arrays whose examples are decoded on demand, so a Dataset larger than RAM can be batched.

A :class:`LazyArray` stands in for a ``(N, ...)`` NumPy array in a :class:`~jinterp.data.dataset.Dataset`: it has
``shape``, ``dtype``, ``ndim`` and ``len``, and ``x[indices]`` decodes only those examples (what
:class:`~jinterp.data.pipeline.BatchIterator` asks for, one batch at a time, in its prefetch thread, so decoding
overlaps compute). ``np.asarray(x)`` decodes everything (for code that needs a real array). ``Dataset.take`` keeps
it lazy. Readers make one with ``lazy=True`` (``folder``, ``broden``, ``cub``, ``tfds``; ``--data
broden:PATH:lazy=1``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class LazyArray:
    """``(N, *item_shape)`` examples; example ``i`` is ``decode(i)`` (an array of ``item_shape`` and ``dtype``).

    ``decode_batch``: instead of ``decode``, a function of an index array returning the ``(len(indices),
    *item_shape)`` examples at once (a reader whose records hold several columns decodes each record once per
    batch and serves every column from it, ``tfds:``)."""

    def __init__(self, n: int, item_shape: tuple[int, ...], dtype, decode: Callable[[int], np.ndarray] | None = None,
                 indices: np.ndarray | None = None, *,
                 decode_batch: Callable[[np.ndarray], np.ndarray] | None = None):
        if (decode is None) == (decode_batch is None):
            raise TypeError("LazyArray needs exactly one of decode and decode_batch")
        if decode is None:
            decode = lambda i: decode_batch(np.asarray([i]))[0]  # noqa: E731
        self._decode, self._decode_batch, self._n = decode, decode_batch, n
        self._idx = np.arange(n) if indices is None else np.asarray(indices, np.int64)
        self.item_shape, self.dtype = tuple(item_shape), np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._idx), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    def __len__(self) -> int:
        return len(self._idx)

    def _one(self, i: int) -> np.ndarray:
        return np.asarray(self._decode(int(i)), self.dtype).reshape(self.item_shape)

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, int | np.integer):
            out = self._one(self._idx[first])
            return out[rest] if rest else out
        sel = self._idx[first]
        if not len(sel):
            out = np.zeros((0, *self.item_shape), self.dtype)
        elif self._decode_batch is not None:
            out = np.asarray(self._decode_batch(sel), self.dtype).reshape(len(sel), *self.item_shape)
        else:
            out = np.stack([self._one(i) for i in sel])
        return out[(slice(None), *rest)] if rest else out

    def subset(self, indices) -> LazyArray:
        """The examples at ``indices`` (still lazy)."""
        out = LazyArray(self._n, self.item_shape, self.dtype, self._decode, self._idx[np.asarray(indices)])
        out._decode_batch = self._decode_batch
        return out

    def astype(self, dtype, copy=True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=copy)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


def is_lazy(a) -> bool:
    return isinstance(a, LazyArray)
