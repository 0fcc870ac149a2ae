"""Mutual information between continuous features and discrete labels, and the mutual-information score (MIS).

A JAX port of scikit-learn's ``mutual_info_classif`` (continuous features, ``n_neighbors=3``): the Ross (2014)
continuous-discrete k-nearest-neighbour estimator, with scikit-learn's preprocessing (each column divided by its
standard deviation, then ``1e-10 * max(1, mean|x|) * N(0, 1)`` noise to break ties).

    mi = mutual_info_classif(features, labels, noise=sklearn_noise(features.shape, 0))   # (K,) nats
    mis, M = mutual_information_score(features, labels, num_classes)                    # CSG's MIS (spec B.5.2)

Algorithm per column (exact, O(N log N) instead of scikit-learn's trees):

1. Sort the points by (label, value). A point's k nearest neighbours within its own class lie among the k
   neighbours on either side in that order, so the k-th neighbour distance ``r_i`` is the k-th smallest of 2k
   candidates (``k_i = min(k, n_class - 1)``).
2. ``m_i`` = number of points of any class with ``|x_j - x_i| <= nextafter(r_i, 0)`` (the point itself included).
   In a sorted array these form a contiguous run; its ends are found by bisection on the *same* floating-point
   predicate scikit-learn evaluates (``fl(x_j - x_i)`` is monotone in ``x_j``), so the count is exact, ties
   included.
3. ``I = psi(n) + <psi(k_i)> - <psi(n_class(i))> - <psi(m_i)>`` over the points whose label occurs more than
   once, clipped at 0.

Precision: scikit-learn works in float64, and its 1e-10 jitter only exists in float64 (in float32 it vanishes on
O(1) values, and repeated values then stay tied: on a fixture with rounded values the MI moved by 0.2 nats). So
the public functions compute in float64 by default (``precision="float64"`` runs them under
``jax.enable_x64(True)``); with the same noise (:func:`sklearn_noise`) they then match scikit-learn to
round-off. ``precision="float32"`` is faster on accelerators and agrees where values are not repeated.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma

from jinterp.errors import ConfigError, ShapeError

NOISE_SCALE = 1e-10


def sklearn_noise(shape: tuple[int, int], random_state: int = 0) -> np.ndarray:
    """The standard-normal draws scikit-learn adds for ``random_state`` (``RandomState(seed).standard_normal``).

    ``mutual_info_classif(X, y, random_state=s)`` uses exactly these (before scaling by ``1e-10 * max(1,
    mean|x|)``), for every call with the same seed, so the MIS computed class by class sees one noise draw.
    """
    return np.random.RandomState(random_state).standard_normal(size=shape)


def preprocess(x: jax.Array, noise: jax.Array | None) -> jax.Array:
    """scikit-learn's ``scale(x, with_mean=False)`` then ``+= 1e-10 * max(1, mean|x|) * noise`` (per column)."""
    std = jnp.std(x, axis=0)
    std = jnp.where(std < 10 * jnp.finfo(x.dtype).eps, 1.0, std)  # sklearn's _handle_zeros_in_scale
    x = x / std
    if noise is not None:
        means = jnp.maximum(1.0, jnp.mean(jnp.abs(x), axis=0))
        x = x + NOISE_SCALE * means * noise.astype(x.dtype)
    return x


def _first_false(pred, n: int, shape) -> jax.Array:
    """Smallest index ``q`` in ``[0, n]`` with ``pred(q)`` False, for predicates true on a prefix (vectorized)."""
    lo = jnp.zeros(shape, jnp.int32)
    hi = jnp.full(shape, n, jnp.int32)
    steps = max(1, int(np.ceil(np.log2(n + 1))) + 1)

    def body(_, carry):
        lo, hi = carry
        mid = (lo + hi) // 2
        p = pred(jnp.minimum(mid, n - 1)) & (mid < n)
        return jnp.where(p & (lo < hi), mid + 1, lo), jnp.where(~p & (lo < hi), mid, hi)

    lo, _ = jax.lax.fori_loop(0, steps, body, (lo, hi))
    return lo


def mi_column(x: jax.Array, labels: jax.Array, num_labels: int, n_neighbors: int = 3) -> jax.Array:
    """Ross's estimate (nats, >= 0) of I(x; label) for one continuous column ``x`` (N,) and int ``labels`` (N,)
    in ``[0, num_labels)``. No scaling or noise here (see :func:`mutual_info_classif`)."""
    n = x.shape[0]
    inf = jnp.array(jnp.inf, x.dtype)
    counts = jnp.zeros((num_labels,), jnp.int32).at[labels].add(1)
    count_i = counts[labels]
    keep = count_i > 1
    k_i = jnp.clip(jnp.minimum(n_neighbors, count_i - 1), 1, None)

    # 1. within-class k-th neighbour distance.
    order = jnp.lexsort((x, labels))
    xs, ls = x[order], labels[order]
    pos = jnp.arange(n)
    cands = []
    for j in range(1, n_neighbors + 1):
        for nb in (pos - j, pos + j):
            ok = (nb >= 0) & (nb < n)
            nbc = jnp.clip(nb, 0, n - 1)
            ok = ok & (ls[nbc] == ls)
            cands.append(jnp.where(ok, jnp.abs(xs[nbc] - xs), inf))
    cands = jnp.sort(jnp.stack(cands, axis=1), axis=1)
    k_sorted = k_i[order]
    r_sorted = jnp.take_along_axis(cands, (k_sorted - 1)[:, None], axis=1)[:, 0]
    radius = jnp.zeros_like(x).at[order].set(jnp.nextafter(r_sorted, jnp.zeros_like(r_sorted)))

    # 2. m_i over the kept points of every class: bisection on the exact predicates.
    xg = jnp.sort(jnp.where(keep, x, inf))
    right_end = _first_false(lambda q: (xg[q] - x) <= radius, n, x.shape)       # fl(x_j - x_i) <= rad
    left_end = _first_false(lambda q: ~((x - xg[q]) <= radius), n, x.shape)     # first q with fl(x_i - x_j) <= rad
    m_i = right_end - left_end

    w = keep.astype(x.dtype)
    n_keep = w.sum()
    mean = lambda v: (v * w).sum() / jnp.maximum(n_keep, 1.0)
    f = lambda v: digamma(jnp.maximum(v, 1).astype(x.dtype))
    mi = digamma(jnp.maximum(n_keep, 1.0)) + mean(f(k_i)) - mean(f(count_i)) - mean(f(m_i))
    return jnp.where(n_keep > 0, jnp.maximum(mi, 0.0), 0.0)


@functools.partial(jax.jit, static_argnames=("num_labels", "n_neighbors"))
def _mi_matrix(x, labels, num_labels, n_neighbors):
    return jax.vmap(lambda col: mi_column(col, labels, num_labels, n_neighbors), in_axes=1)(x)


def _check(features, labels):
    if features.ndim != 2:
        raise ShapeError(f"features must be (N, K), got shape {tuple(features.shape)}; pool spatial maps first")
    if labels.shape != features.shape[:1]:
        raise ShapeError(f"labels must be (N,) = ({features.shape[0]},), got shape {tuple(labels.shape)}")
    if features.shape[0] < 2:
        raise ShapeError(f"need at least 2 samples for a kNN estimate, got {features.shape[0]}")
    # kNN distances on NaN/Inf are meaningless and would silently give MI 0 (NaN compares False): refuse them.
    bad = ~np.isfinite(np.asarray(jax.device_get(features)))
    if bad.any():
        cols = np.flatnonzero(bad.any(0))
        raise ShapeError(f"features hold {int(bad.sum())} NaN/Inf values (in columns {cols[:8].tolist()}"
                         f"{'…' if cols.size > 8 else ''}); MI needs finite activations: check the model (a diverged "
                         "run) and the inputs.")


def _x64(precision: str):
    if precision == "float64":
        return jax.enable_x64(True)
    if precision == "float32":
        return contextlib.nullcontext()
    raise ConfigError(f"precision must be 'float64' or 'float32', got {precision!r}")


def _as_float(features, precision: str) -> jax.Array:
    return jnp.asarray(np.asarray(features), jnp.float64 if precision == "float64" else jnp.float32)


def mutual_info_classif(features, labels, *, n_neighbors: int = 3, noise=None, num_labels: int | None = None,
                        precision: str = "float64") -> np.ndarray:
    """Per-feature MI (nats) with a discrete target, as ``sklearn.feature_selection.mutual_info_classif``.

    features: ``(N, K)`` continuous; labels: ``(N,)`` ints in ``[0, num_labels)`` (default ``max + 1``).
    noise: ``(N, K)`` standard-normal draws for the tie-breaking jitter (``sklearn_noise(shape, seed)`` to
    reproduce ``random_state=seed``); ``None`` adds no jitter. Returns a host array ``(K,)``.
    """
    with _x64(precision):
        features = _as_float(jax.device_get(features), precision)
        labels = jnp.asarray(np.asarray(labels)).astype(jnp.int32)
        _check(features, labels)
        if num_labels is None:
            num_labels = int(jax.device_get(labels.max())) + 1
        x = preprocess(features, None if noise is None else jnp.asarray(np.asarray(noise), features.dtype))
        return np.asarray(_mi_matrix(x, labels, int(num_labels), int(n_neighbors)))


@functools.partial(jax.jit, static_argnames=("num_classes", "n_neighbors"))
def _mi_class_matrix(x, labels, num_classes, n_neighbors):
    def per_class(c):
        b = (labels == c).astype(jnp.int32)
        return jax.vmap(lambda col: mi_column(col, b, 2, n_neighbors), in_axes=1)(x)

    return jax.lax.map(per_class, jnp.arange(num_classes))


def mutual_information_score(features, labels, num_classes: int, *, n_neighbors: int = 3, noise="sklearn",
                             random_state: int = 0, precision: str = "float64") -> tuple[float, np.ndarray]:
    """CSG's MIS (spec B.5.2): ``mean_k max_c I(a_k ; 1[y = c])``.

    features: pooled activations ``(N, K)``; labels ``(N,)`` in ``[0, num_classes)``. Returns ``(mis, M)`` with
    ``M[c, k]`` the MI of filter k with the class-c indicator. ``noise="sklearn"`` uses scikit-learn's draws
    for ``random_state`` (the released evaluation calls ``mutual_info_classif(..., random_state=0)`` once per
    class, i.e. the same jitter for every class); an array gives explicit draws; ``None`` none. Host results.
    """
    with _x64(precision):
        features = _as_float(jax.device_get(features), precision)
        labels = jnp.asarray(np.asarray(labels)).astype(jnp.int32)
        _check(features, labels)
        lab = np.asarray(labels)
        if lab.min() < 0 or lab.max() >= num_classes:
            raise ShapeError(f"labels range over [{lab.min()}, {lab.max()}] but num_classes={num_classes}; labels "
                             f"must lie in [0, num_classes).")
        if isinstance(noise, str):
            if noise != "sklearn":
                raise ConfigError(f"noise must be 'sklearn', an array or None, got {noise!r}")
            noise = sklearn_noise(tuple(features.shape), random_state)
        x = preprocess(features, None if noise is None else jnp.asarray(np.asarray(noise), features.dtype))
        m = np.asarray(_mi_class_matrix(x, labels, int(num_classes), int(n_neighbors)))
    return float(m.max(axis=0).mean()), m


def gate_density(gate) -> jax.Array:
    """L1 density ``||G||_1 / (K * C)`` of a gate matrix (spec B.5.2, ``get_density``)."""
    gate = jnp.asarray(gate)
    return jnp.abs(gate).sum() / gate.size


def filter_mis(maps, labels, num_classes: int, **kwargs) -> tuple[float, np.ndarray]:
    """CSG's MIS from the gated layer's feature maps, as the spec defines it (B.5.2 step 1).

    ``maps``: ``(N, h, w, K)`` activations of the gated layer (``layer4`` in the paper; the gate disabled); the
    features are their spatial means ``(N, K)``. Taking maps rather than features makes the wiring checkable:
    logits or probabilities ``(N, C)`` are refused. ``kwargs`` go to :func:`mutual_information_score`. Higher
    MIS: each filter carries more information about one class (more class-specific).
    """
    shape = tuple(np.shape(maps))
    if len(shape) != 4:
        raise ShapeError(f"filter_mis needs the gated layer's feature maps (N, h, w, K), got shape {shape}; MIS is "
                         "computed on the spatial mean of each filter's map, not on logits or class probabilities.")
    pooled = np.asarray(jax.device_get(maps), np.float64).mean(axis=(1, 2))
    return mutual_information_score(pooled, labels, num_classes, **kwargs)
