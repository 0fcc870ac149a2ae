"""Interpretable Basis Decomposition (IBD) concept classifiers: the supervised baseline of UIBE.

Zhou, Sun, Bau, Torralba, *Interpretable Basis Decomposition for Visual Explanation*, ECCV 2018; spec
``uibe_and_metrics.md`` §3 (what the paper says and what the official code ``CSAILVision/IBD`` does).

One logistic classifier per concept, ``h_c(x) = σ(w_cᵀ x + b_c)``, on the pixel features of a layer (labels:
concept masks nearest-downsampled to the feature grid). As in the official code (spec §3.2):

* loss = MSE between the sigmoid output and the 0/1 label (``loss="mse"``; ``"bce"`` is an option), plain SGD
  (lr 1e-2), batch 128, 15 epochs; raw (unstandardised) features;
* per concept: all its positive pixels (capped at ``max_positives``), a cached pool of ``neg_pool_ratio`` (20)×
  as many negatives drawn from the pixels without the concept;
* each epoch mines ``neg_ratio`` (2)× as many negatives as positives from the pool: random ones in epoch 0, then
  the **highest-scoring** negatives under the current classifier (hard-negative mining);
* ``val_split="mined"`` (default, as ``CSAILVision/IBD``'s ``negative_mining_loader``/``_dataset_maker``): the
  positives and that epoch's mined negatives (hardest first) are split 3:1, the first three quarters train, the
  last quarter is the validation set (positives : negatives 1:2); AP of the last epoch's split is reported.
  ``val_split="pool"`` (jinterp's earlier choice, kept reachable): the pool itself is split 3:1 and the held-out
  quarter of the pool (1:20 random negatives) validates, so AP is measured on easy negatives;
* ``init="torch"`` (default, the release's ``nn.Linear``): weights and bias uniform in ``±1/sqrt(D)``;
  ``init="zeros"`` keeps the earlier zero start;
* ``categories`` (default object + part, IBD paper §3.1 and the release's concept list) is applied by the caller
  (``jinterp basis``) to choose the label columns; ``()`` trains every concept.

All concepts train **together**: the per-concept index sets are padded to one length and masked, and one jitted
epoch ``vmap``s the classifier step over concepts inside a ``lax.scan`` over mini-batches (the official code loops
over concepts in Python). A concept whose padded batch holds no real example gets a zero gradient, so concepts
with fewer pixels simply stop moving once their examples are used up in an epoch.

The basis vector of concept c is ``q_c = (w_c − mean(w_c)) / ‖w_c − mean(w_c)‖`` ("unbiased" rows, spec §3.1).
:func:`decompose` writes a feature vector as ``Σ_k s_k q_{c_k} + r`` over greedily chosen concepts (IBD's
decomposition, applied here to any vector: a pixel feature or a class weight).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.core.config import check_field_types
from jinterp.errors import ConfigError, DataError, ShapeError


@dataclasses.dataclass(frozen=True)
class IBDConfig:
    lr: float = 1e-2
    batch_size: int = 128
    epochs: int = 15
    neg_pool_ratio: int = 20        # cached negative pool per concept = 20 × positives
    neg_ratio: int = 2              # negatives per epoch = 2 × positives (random in epoch 0, then hardest)
    val_fraction: float = 0.25      # positives and pool split 3:1 train/val
    max_positives: int = 2000       # cap per concept (padding length); 0 = no cap
    min_positives: int = 4          # concepts with fewer positive pixels are skipped (IBD: < 10 images dropped)
    loss: str = "mse"               # "mse" (official code) or "bce"
    val_split: str = "mined"        # "mined": last quarter of each epoch's mined set (release); "pool": 1:20 pool
    init: str = "torch"             # "torch": nn.Linear's U(±1/sqrt(D)) (release); "zeros"
    categories: tuple[str, ...] = ("object", "part")  # concept categories trained (IBD); () = all
    seed: int = 0

    def __post_init__(self) -> None:
        # Built on its own through the Python API too: a wrongly typed field is a one-line ConfigError here.
        check_field_types(self)

    @classmethod
    def paper(cls) -> IBDConfig:
        return cls()

    @classmethod
    def tiny(cls) -> IBDConfig:
        return cls(epochs=6, max_positives=400, batch_size=128)

    def validate(self) -> None:
        if self.loss not in ("mse", "bce"):
            raise ConfigError(f"IBD loss must be 'mse' or 'bce', got {self.loss!r}")
        if self.val_split not in ("mined", "pool"):
            raise ConfigError(f"IBD val_split must be 'mined' (release) or 'pool', got {self.val_split!r}")
        if self.init not in ("torch", "zeros"):
            raise ConfigError(f"IBD init must be 'torch' (release) or 'zeros', got {self.init!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.neg_pool_ratio < self.neg_ratio:
            raise ConfigError("IBD needs lr > 0, batch_size >= 1, epochs >= 1 and neg_pool_ratio >= neg_ratio")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


class IBDResult(NamedTuple):
    weights: np.ndarray        # (D, C) classifier filters w_c (raw feature space)
    bias: np.ndarray           # (C,)
    directions: np.ndarray     # (D, C) unit basis vectors q_c (mean-centred, normalised rows of the paper)
    concepts: np.ndarray       # (C,) indices into the label columns that were trained
    val_ap: np.ndarray         # (C,) average precision on each concept's held-out pixels
    history: np.ndarray        # (epochs, C) mean training loss per concept


def _sample_indices(rng: np.random.Generator, labels: np.ndarray, cfg: IBDConfig):
    """Per concept: positive and negative-pool pixel indices, split train/val, padded to common lengths."""
    n_pix, n_c = labels.shape
    pos_tr, pos_va, pool_tr, pool_va = [], [], [], []
    for c in range(n_c):  # index bookkeeping only (host side, once); training is vectorised
        pos = np.flatnonzero(labels[:, c])
        if cfg.max_positives and len(pos) > cfg.max_positives:
            pos = rng.choice(pos, cfg.max_positives, replace=False)
        neg_all = np.flatnonzero(~labels[:, c])
        neg = rng.choice(neg_all, min(len(neg_all), cfg.neg_pool_ratio * len(pos)), replace=False)
        pos, neg = rng.permutation(pos), rng.permutation(neg)
        kp, kn = int(round(len(pos) * (1 - cfg.val_fraction))), int(round(len(neg) * (1 - cfg.val_fraction)))
        if cfg.val_split == "mined":
            kn = len(neg)  # the whole pool is mined from; validation negatives come from each epoch's mined set
        pos_tr.append(pos[:kp]), pos_va.append(pos[kp:]), pool_tr.append(neg[:kn]), pool_va.append(neg[kn:])

    def pad(lists):
        n = max(1, max(len(x) for x in lists))
        idx = np.zeros((len(lists), n), np.int32)
        mask = np.zeros((len(lists), n), bool)
        for i, x in enumerate(lists):
            idx[i, :len(x)], mask[i, :len(x)] = x, True
        return idx, mask

    return pad(pos_tr), pad(pos_va), pad(pool_tr), pad(pool_va)


def permutations(keys: jax.Array, n: int) -> jax.Array:
    """``(K, n)``: row k equals ``jax.random.permutation(keys[k], n)`` exactly, about 8× faster on XLA:CPU.

    ``jax.random.permutation`` sorts ``arange(n)`` by fresh random 32-bit keys in ``r`` rounds (r = 2 for
    n ≈ 10³–10⁶) with a stable ``sort_key_val``; XLA:CPU sorts key-value pairs through a generic comparator, ~8×
    slower than a keys-only sort (profile of the IBD epoch at D = 64: the shuffle was a third of it). Here each
    round is :func:`_sort_values_by`, the same stable order from a keys-only sort, so the result is identical
    (ties included).
    """
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax.random._shuffle
    x = jnp.broadcast_to(jnp.arange(n), (keys.shape[0], n))
    for _ in range(rounds):
        pairs = jax.vmap(jax.random.split)(keys)
        keys, bits = pairs[:, 0], jax.vmap(lambda k: jax.random.bits(k, (n,), jnp.uint32))(pairs[:, 1])
        x = _sort_values_by(bits, x)
    return x


def _sort_values_by(bits: jax.Array, x: jax.Array) -> jax.Array:
    """``lax.sort_key_val(bits, x, 1)[1]`` for ``(K, n)`` (a stable sort) from one keys-only sort.

    With ``s = ceil(log2 n)`` bits for a position, ``(bits >> s) << s | position`` (uint32, n < 2¹⁶) sorts keys-only
    into the stable order of the keys' high ``32 − s`` bits, ties by position. Keys that share those high bits
    (random keys: ~20 pairs in a row of 4500) form contiguous groups that may be out of order in the low bits; an
    odd–even transposition pass swaps adjacent members of a group whose full keys are strictly out of order
    (never equal ones, so ties keep position order, as the stable sort) and passes repeat until none swaps:
    exactly the stable sort, in one sort plus a few cheap passes (a row of equal high bits, e.g. keys < 2^s, needs
    up to n passes: correct, slow). The earlier form (rank by ``searchsorted``, then a sort of ``rank · n + i``)
    took two sorts and a binary search, twice the time (issue #21).
    """
    n = bits.shape[1]
    if n >= 2**16:  # a position needs more than 16 bits: the generic sort
        return jax.lax.sort_key_val(bits, x, 1)[1]
    shift = max(1, (n - 1).bit_length())
    packed = jnp.sort(((bits >> shift) << shift) | jnp.arange(n, dtype=jnp.uint32), axis=1)
    head = packed >> shift                                               # the high bits, ascending
    order = (packed & jnp.uint32((1 << shift) - 1)).astype(jnp.int32)    # positions
    full = jnp.take_along_axis(bits, order, 1)

    def phase(full, order, start: int):
        """One odd (start=1) or even (start=0) transposition phase within groups of equal ``head``."""
        m = (n - start) // 2 * 2
        if m == 0:
            return full, order, jnp.bool_(False)
        pair = lambda a: a[:, start:start + m].reshape(a.shape[0], m // 2, 2)  # noqa: E731
        hh, ff, oo = pair(head), pair(full), pair(order)
        swap = (hh[..., 0] == hh[..., 1]) & (ff[..., 0] > ff[..., 1])

        def put(a, p):
            return a.at[:, start:start + m].set(jnp.where(swap[..., None], p[..., ::-1], p).reshape(a.shape[0], m))

        return put(full, ff), put(order, oo), jnp.any(swap)

    def body(state):
        full, order, _ = state
        full, order, swapped_even = phase(full, order, 0)
        full, order, swapped_odd = phase(full, order, 1)
        return full, order, swapped_even | swapped_odd

    _, order, _ = jax.lax.while_loop(lambda state: state[2], body, (full, order, jnp.bool_(True)))
    return jnp.take_along_axis(x, order, 1)


def _loss(w, b, x, y, m, kind: str):
    logit = x @ w + b
    if kind == "mse":
        per = (jax.nn.sigmoid(logit) - y) ** 2
    else:
        per = -(y * jax.nn.log_sigmoid(logit) + (1 - y) * jax.nn.log_sigmoid(-logit))
    return jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1.0)


def _epoch(w, b, x, pos_idx, pos_mask, pool_idx, pool_mask, key, hard, cfg: IBDConfig, n_neg: int, steps: int):
    """One epoch for every concept at once: ``(w, b, mean loss (C,))`` (see :func:`_epoch_full`; here every
    positive given trains, so under ``val_split="mined"`` the mined count is ``neg_ratio ×`` these positives)."""
    return _epoch_full(w, b, x, pos_idx, pos_mask, pool_idx, pool_mask, pos_mask.sum(1), key, hard, cfg=cfg,
                       n_neg=n_neg, steps=steps)[:3]


@functools.partial(jax.jit, static_argnames=("cfg", "n_neg", "steps"))
def _epoch_full(w, b, x, pos_idx, pos_mask, pool_idx, pool_mask, n_pos_all, key, hard, cfg: IBDConfig, n_neg: int,
                steps: int):
    """One epoch for every concept at once (vmap over concepts, scan over mini-batches).

    ``n_pos_all (C,)``: every positive of the concept, train and validation (the release mines ``neg_ratio ×``
    that many negatives). Returns ``(w, b, mean loss (C,), mined negatives (C, n_neg), their validation mask
    (C, n_neg))``.
    """
    n_c = w.shape[1]
    n_pos = pos_mask.sum(1)
    # Negatives of this epoch: random (epoch 0) or the top-scoring members of the pool (hard-negative mining).
    # Only the branch taken runs: drawing the epoch-0 uniforms (C × pool) on every hard epoch cost as much as
    # scoring (issue #21).
    rank_key = jax.lax.cond(hard, lambda: jnp.take_along_axis((x @ w + b).T, pool_idx, 1),  # score pixels once
                            lambda: jax.random.uniform(key, pool_idx.shape))
    rank_key = jnp.where(pool_mask, rank_key, -jnp.inf)
    _, order = jax.lax.top_k(rank_key, n_neg)                                     # (C, n_neg)
    neg_idx = jnp.take_along_axis(pool_idx, order, 1)
    slot = jnp.arange(n_neg)[None, :]
    if cfg.val_split == "mined":
        # release: mine 2 × all positives, hardest first; the first 3/4 train, the last quarter validates
        want = jnp.minimum(cfg.neg_ratio * n_pos_all, pool_mask.sum(1))
        k_train = jnp.floor(want * (1 - cfg.val_fraction)).astype(want.dtype)
        neg_mask = slot < k_train[:, None]
        val_mask = (slot >= k_train[:, None]) & (slot < want[:, None])
    else:
        want = jnp.minimum(cfg.neg_ratio * n_pos, pool_mask.sum(1))
        neg_mask = slot < want[:, None]
        val_mask = jnp.zeros_like(neg_mask)
    # Training set per concept: positives then negatives, shuffled, padded to steps × batch.
    idx = jnp.concatenate([pos_idx, neg_idx], 1)
    lab = jnp.concatenate([jnp.ones_like(pos_idx, jnp.float32), jnp.zeros_like(neg_idx, jnp.float32)], 1)
    msk = jnp.concatenate([pos_mask, neg_mask], 1).astype(jnp.float32)
    perm = permutations(jax.random.split(jax.random.fold_in(key, 1), n_c), idx.shape[1])
    idx, lab, msk = (jnp.take_along_axis(a, perm, 1) for a in (idx, lab, msk))
    total = steps * cfg.batch_size
    padn = total - idx.shape[1]
    idx, lab, msk = (jnp.pad(a, ((0, 0), (0, padn))) for a in (idx, lab, msk))
    idx, lab, msk = (a.reshape(n_c, steps, cfg.batch_size).transpose(1, 0, 2) for a in (idx, lab, msk))

    grad = jax.vmap(jax.value_and_grad(functools.partial(_loss, kind=cfg.loss), argnums=(0, 1)),
                    in_axes=(1, 0, 0, 0, 0), out_axes=0)

    def step(carry, batch):
        w, b = carry
        bi, bl, bm = batch
        loss, (gw, gb) = grad(w, b, x[bi], bl, bm)
        return (w - cfg.lr * gw.T, b - cfg.lr * gb), (loss, bm.sum(1))

    (w, b), (losses, counts) = jax.lax.scan(step, (w, b), (idx, lab, msk))
    mean_loss = (losses * counts).sum(0) / jnp.maximum(counts.sum(0), 1.0)
    return w, b, mean_loss, neg_idx, val_mask


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP (scikit-learn's ``average_precision_score``); 0 when there are no positives."""
    labels = np.asarray(labels, bool)
    if labels.sum() == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = labels[order]
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((prec * hits).sum() / hits.sum())


def fit(pixels: np.ndarray, labels: np.ndarray, cfg: IBDConfig = IBDConfig()) -> IBDResult:
    """Train one linear classifier per label column.

    Args:
      pixels: ``(P, D)`` raw pixel features.
      labels: ``(P, C)`` bool, pixel carries concept c (masks nearest-downsampled to the feature grid).
    Returns an :class:`IBDResult` over the concepts with at least ``min_positives`` positives (``concepts`` maps
    result columns back to label columns).
    """
    cfg.validate()
    pixels = np.asarray(pixels, np.float32)
    labels = np.asarray(labels, bool)
    if pixels.ndim != 2 or labels.ndim != 2 or len(pixels) != len(labels):
        raise ShapeError(f"IBD takes pixels (P, D) and labels (P, C) of the same P; got {pixels.shape} and "
                         f"{labels.shape}.")
    if not np.all(np.isfinite(pixels)):
        raise ShapeError("pixel features contain NaN or Inf; check the backbone's input and weights.")
    keep = np.flatnonzero(labels.sum(0) >= cfg.min_positives)
    if keep.size == 0:
        raise DataError(f"no concept has >= {cfg.min_positives} positive pixels; nothing to train.")
    labels = labels[:, keep]
    rng = np.random.default_rng(cfg.seed)
    (pt, ptm), (pv, pvm), (nt, ntm), (nv, nvm) = _sample_indices(rng, labels, cfg)
    n_c, d = labels.shape[1], pixels.shape[1]
    n_pos_all = ptm.sum(1) + pvm.sum(1)
    n_neg = min(nt.shape[1], cfg.neg_ratio * (int(n_pos_all.max()) if cfg.val_split == "mined" else pt.shape[1]))
    steps = -(-(pt.shape[1] + n_neg) // cfg.batch_size)
    x = jnp.asarray(pixels)
    key = jax.random.key(cfg.seed)
    w, b = init_params(jax.random.fold_in(key, 10_000), d, n_c, cfg.init)
    hist = []
    args = [jnp.asarray(a) for a in (pt, ptm, nt, ntm, n_pos_all)]
    for epoch in range(cfg.epochs):
        w, b, loss, neg_idx, neg_val = _epoch_full(w, b, x, *args, jax.random.fold_in(key, epoch),
                                                   jnp.asarray(epoch > 0), cfg=cfg, n_neg=n_neg, steps=steps)
        hist.append(loss)
    w, b = np.asarray(w), np.asarray(b)
    if cfg.val_split == "mined":  # the last epoch's mined validation quarter (as the release reports its AP)
        nv, nvm = np.asarray(neg_idx), np.asarray(neg_val)
    # Validation AP per concept on its held-out positives + negatives.
    aps = []
    for c in range(n_c):
        idx = np.concatenate([pv[c][pvm[c]], nv[c][nvm[c]]])
        aps.append(average_precision(pixels[idx] @ w[:, c] + b[c], labels[idx, c]))
    return IBDResult(w, b, unbias(w), keep, np.asarray(aps, np.float32), np.asarray(jnp.stack(hist)))


def init_params(key: jax.Array, dim: int, num_concepts: int, init: str = "torch") -> tuple[jax.Array, jax.Array]:
    """Initial ``(w (D, C), b (C,))``: ``"torch"`` = ``nn.Linear(D, C)``'s default (kaiming-uniform with a=√5,
    i.e. weights and bias uniform in ``±1/sqrt(D)``, as the release's ``IndexLinear``); ``"zeros"`` = all zero."""
    if init == "zeros":
        return jnp.zeros((dim, num_concepts), jnp.float32), jnp.zeros((num_concepts,), jnp.float32)
    bound = 1.0 / np.sqrt(dim)
    kw, kb = jax.random.split(key)
    return (jax.random.uniform(kw, (dim, num_concepts), jnp.float32, -bound, bound),
            jax.random.uniform(kb, (num_concepts,), jnp.float32, -bound, bound))


def unbias(weights: np.ndarray) -> np.ndarray:
    """IBD's basis vectors: every filter mean-centred over its D coordinates and L2-normalised."""
    w = np.asarray(weights, np.float64)
    w = w - w.mean(0, keepdims=True)
    return (w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)).astype(np.float32)


class Decomposition(NamedTuple):
    concepts: np.ndarray     # (k,) chosen columns, in order of selection
    coefficients: np.ndarray  # (k,)
    residual: np.ndarray     # (D,)


def decompose(vector: np.ndarray, directions: np.ndarray, k: int = 5, nonneg: bool = False) -> Decomposition:
    """Greedy decomposition ``v ≈ Σ_j s_j q_{c_j} + r`` (IBD §2.3).

    At each of ``k`` rounds the concept whose addition (with the coefficients re-fitted by least squares over
    all chosen concepts) leaves the smallest residual is added. ``nonneg`` restricts to concepts with positive
    coefficients (IBD decomposes class weights into positively contributing concepts). ``v = Σ s q + r`` holds
    exactly by construction.
    """
    v = np.asarray(vector, np.float64)
    q = np.asarray(directions, np.float64)
    if v.ndim != 1 or q.ndim != 2 or q.shape[0] != v.shape[0]:
        raise ShapeError(f"decompose needs a (D,) vector and (D, C) directions; got {v.shape} and {q.shape}.")
    chosen: list[int] = []
    coef = np.zeros(0)
    for _ in range(min(k, q.shape[1])):
        best = None
        for c in range(q.shape[1]):  # C small (concepts); a least-squares fit per candidate
            if c in chosen:
                continue
            cols = q[:, chosen + [c]]
            s, *_ = np.linalg.lstsq(cols, v, rcond=None)
            if nonneg and s[-1] <= 0:
                continue
            err = np.linalg.norm(v - cols @ s)
            if best is None or err < best[0]:
                best = (err, c, s)
        if best is None:
            break
        chosen.append(best[1])
        coef = best[2]
    resid = v - (q[:, chosen] @ coef if chosen else 0.0)
    return Decomposition(np.asarray(chosen, np.int64), np.asarray(coef, np.float64), resid)
