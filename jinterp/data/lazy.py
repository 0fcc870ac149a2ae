"""Arrays whose examples are decoded on demand, so a Dataset larger than RAM can be batched.

A :class:`LazyArray` stands in for a ``(N, ...)`` NumPy array in a :class:`~jinterp.data.dataset.Dataset`: it has
``shape``, ``dtype``, ``ndim`` and ``len``, and ``x[indices]`` decodes only those examples (what
:class:`~jinterp.data.pipeline.BatchIterator` asks for, one batch at a time, in its prefetch thread, so decoding
overlaps compute). ``np.asarray(x)`` decodes everything (for code that needs a real array). ``Dataset.take`` keeps
it lazy. Readers make one with ``lazy=True`` (``folder``, ``broden``, ``cub``; ``--data broden:PATH:lazy=1``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class LazyArray:
    """``(N, *item_shape)`` examples; example ``i`` is ``decode(i)`` (an array of ``item_shape`` and ``dtype``)."""

    def __init__(self, n: int, item_shape: tuple[int, ...], dtype, decode: Callable[[int], np.ndarray],
                 indices: np.ndarray | None = None):
        self._decode, self._n = decode, n
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
        out = np.stack([self._one(i) for i in sel]) if len(sel) else np.zeros((0, *self.item_shape), self.dtype)
        return out[(slice(None), *rest)] if rest else out

    def subset(self, indices) -> LazyArray:
        """The examples at ``indices`` (still lazy)."""
        return LazyArray(self._n, self.item_shape, self.dtype, self._decode, self._idx[np.asarray(indices)])

    def astype(self, dtype, copy=True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=copy)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


def is_lazy(a) -> bool:
    return isinstance(a, LazyArray)
