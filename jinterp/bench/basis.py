"""Interpretable basis, JAX vs PyTorch: a UIBE optimisation step, the dissection tally, an IBD epoch.

    python -m jinterp.bench.basis [--quick] [--repeats 7]

Pipelines (the PyTorch side is ``jinterp/bench/torch_basis.py``; same inputs, same initial parameters):

* ``basis.uibe_step`` — one UIBE step on a pixel mini-batch: standardise, QR-orthonormalise ``Q``, losses L^s,
  L^ma, L^mm, gradient, Adam update (JAX: :func:`jinterp.methods.basis.uibe.losses` + ``make_optimizer``, the body of
  the fit's scan, whose L^s/L^ma and projection carry hand-written VJPs; PyTorch: the textbook formulas through
  autograd + ``torch.optim.Adam``). Agreement: max abs diff of the losses, the gradients
  and the updated ``(a, m, b)`` (updated entries whose gradient is below 1e-6 excluded: Adam's first step there is
  ``lr · sign(rounding noise)`` in either framework, up to 1e-3 apart with nothing wrong).
  Shapes: the synthparts ConvNet ``relu4`` layer (D = 64, I = 63) and ResNet-18 ``layer4`` as in the paper line
  (D = 512, I = 500), batch 4096 pixels (the spec's reference batch).
* ``basis.uibe_step_polar`` — the same step with ``orthonormalization="polar"`` (one Newton–Schulz step in the
  loss, a Newton–Schulz polar retraction of ``a`` after the update: matmuls only, no LAPACK), against PyTorch's
  twin of that parametrization (``torch_basis.UIBEPolarStep``). Its JAX time beside ``basis.uibe_step``'s, from
  the same run, is the QR-vs-polar comparison (issue #21).
* ``basis.tally`` — the dissection counters of one image batch: activations ``(B, h, w, U)`` -> bilinear
  upsampling to the label resolution -> ``≥ T`` masks -> intersections with every present concept, activated
  pixels per category, label pixel counts (JAX: :func:`jinterp.metrics.dissection._tally_batch`, the jitted body
  of :func:`~jinterp.metrics.dissection.tally`). Agreement: max abs diff of the three counters (exact: 0).
* ``basis.tally_vs_ndl_loop`` — the same JAX tally against NetDissect-Lite's loop over images and units
  (``torch_basis.tally_loop``, NumPy, in the PyTorch column): the baseline of issue #7's ">= 5x" goal.
* ``basis.ibd_epoch`` — one IBD epoch over all concepts (hard-negative selection from each concept's pool, shuffle,
  a scan of SGD steps on the masked MSE-on-sigmoid loss, every concept at once; JAX: the jitted, concept-vmapped
  :func:`jinterp.methods.basis.ibd._epoch`; PyTorch: the same with batched ``(C, B, D)`` gathers and einsum).
  Agreement: the selected hard-negative sets must be equal (each concept whose set differs adds 1), then PyTorch
  replays JAX's tie order among them and JAX's shuffle, and the updated ``(w, b)`` and mean losses are compared
  (max abs diff). The timed PyTorch calls rank and shuffle on their own.

Inputs are synthetic (random features, blocky label maps with object/part/color planes and an image-level
texture); values do not change the work. Tally activations are multiples of 1/8 and the thresholds sit between
representable upsampled values, so both frameworks compute the masks exactly and the counts must match exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.bench import harness
from jinterp.bench.harness import Case, main_for
from jinterp.methods.basis import ibd, uibe
from jinterp.metrics import dissection as dis

# (D, I, pixel batch)
UIBE = [(64, 63, 4096), (512, 500, 4096)]
UIBE_QUICK = [(32, 31, 512)]
# (images, feature h = w, units, label size, concepts per category (object, part, color, texture))
TALLY = [(64, 8, 64, 32, (6, 8, 11, 4)), (16, 7, 512, 56, (40, 30, 11, 19))]
TALLY_QUICK = [(8, 8, 32, 32, (6, 8, 11, 4))]
LOOP = [(16, 8, 64, 32, (6, 8, 11, 4))]
LOOP_QUICK = [(4, 8, 16, 32, (6, 8, 11, 4))]
# (pixels, D, concepts, max positives per concept)
IBD = [(60000, 64, 29, 2000), (30000, 512, 100, 500)]
IBD_QUICK = [(6000, 32, 8, 200)]


def _maxdiff(pairs) -> float:
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) for a, b in pairs)


# --------------------------------------------------------------------------------------------------------------
# UIBE step


def uibe_case(dim: int, n_dirs: int, batch: int, device: str | None = None, orthonormalization: str = "qr") -> Case:
    import torch

    device = device or harness.torch_device()
    from jinterp.bench import torch_basis

    cfg = uibe.UIBEConfig(num_directions=n_dirs, batch_size=batch, orthonormalization=orthonormalization)
    rng = np.random.default_rng(0)
    # ReLU-like features: non-negative, correlated channels.
    raw = np.maximum(rng.standard_normal((4 * batch, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim) + 0.3,
                     0).astype(np.float32)
    std = uibe.standardizer(raw, cfg.standardization)
    xb = raw[:batch]
    p0 = uibe.init_params(jax.random.key(0), xb, n_dirs, cfg)
    tx = uibe.make_optimizer(cfg, steps_per_epoch=4)

    def step(p, s, x):
        return uibe.train_step(p, s, uibe.standardize(std, x), cfg, tx)

    jstep = jax.jit(step, donate_argnums=(0, 1))
    fresh = lambda: jax.tree.map(jnp.array, p0)  # noqa: E731  (copies: donated)
    xj = jnp.asarray(xb)
    state = [fresh()]
    state.append(tx.init(state[0]))

    def jax_fn():
        p, s, parts = jstep(state[0], state[1], xj)
        state[:] = [p, s]
        return parts

    lr = cfg.lr * cfg.batch_size / cfg.reference_batch
    tkw = dict(lambda_sparsity=cfg.lambda_sparsity, lambda_max_activation=cfg.lambda_max_activation,
               lambda_margin=cfg.lambda_margin, lambda_inactive=cfg.lambda_inactive)
    torch_step = torch_basis.UIBEPolarStep if orthonormalization == "polar" else torch_basis.UIBEStep
    new_torch = lambda: torch_step(np.asarray(p0.a), float(p0.m), float(p0.b), np.asarray(std.mean),  # noqa: E731
                                             np.asarray(std.std), lr, device=device, **tkw)
    tstep = new_torch()
    xt = torch.from_numpy(xb).to(device)

    def check():
        p = fresh()
        grads = jax.grad(lambda p: uibe.losses(p, uibe.standardize(std, xj), cfg)[0])(p)
        pj, _, parts_j = jstep(fresh(), tx.init(p), xj)
        t = new_torch()
        parts_t = t(xt)
        pairs = [(parts_j, parts_t.cpu())]
        for name in ("a", "m", "b"):
            gj, gt = np.asarray(getattr(grads, name)), getattr(t, name).grad.cpu().numpy()
            # Adam's first step is lr·g/(|g| + 1e-8): where |g| < 1e-6 it is lr·sign(rounding noise) in either
            # framework, so updated entries are compared only where the gradient is resolved (gradients: all).
            keep = np.abs(gj) >= 1e-6
            new_j, new_t = np.asarray(getattr(pj, name)), getattr(t, name).detach().cpu().numpy()
            pairs += [(gj, gt), (np.where(keep, new_j, 0), np.where(keep, new_t, 0))]
        return _maxdiff(pairs)

    def lowered():
        p = fresh()
        return jax.jit(step).lower(p, tx.init(p), xj)

    if orthonormalization == "polar":
        return Case("basis.uibe_step_polar", {"D": dim, "I": n_dirs, "batch": batch}, jax_fn, lambda: tstep(xt),
                    check, atol=2e-5, jax_lowered=lowered, items=batch,
                    note="orthonormalization='polar': one Newton-Schulz step in the loss, Adam, Newton-Schulz "
                         "retraction (no LAPACK); compare its JAX ms with basis.uibe_step's (QR) in the same run")
    return Case("basis.uibe_step", {"D": dim, "I": n_dirs, "batch": batch}, jax_fn, lambda: tstep(xt), check,
                atol=2e-5, jax_lowered=lowered, items=batch,
                note="one Adam step: loss + grad (through QR) + update; agreement: losses, gradients, updated params")


def uibe_polar_case(dim: int, n_dirs: int, batch: int, device: str | None = None) -> Case:
    """``basis.uibe_step_polar``: the UIBE step with ``orthonormalization="polar"`` (issue #21: UIBE without
    LAPACK QR), against PyTorch's twin of the same parametrization (``torch_basis.UIBEPolarStep``)."""
    return uibe_case(dim, n_dirs, batch, device, orthonormalization="polar")


# --------------------------------------------------------------------------------------------------------------
# Dissection tally


def _blocky(rng, n: int, size: int, ids_per_image: int, num: int, block: int) -> np.ndarray:
    """``(n, size, size)`` label maps in 1..num (0 = none) made of ``block``-pixel squares, few ids per image."""
    g = size // block
    out = np.zeros((n, g, g), np.int32)
    for i in range(n):
        choice = rng.choice(num, min(ids_per_image, num), replace=False) + 1
        out[i] = rng.choice(np.concatenate([[0], choice]), (g, g))
    return np.repeat(np.repeat(out, block, 1), block, 2)[:, :size, :size]


def tally_inputs(images: int, fh: int, units: int, size: int, counts: tuple[int, int, int, int], seed: int = 0):
    """Synthetic activations, thresholds and a ConceptSet (object/part/color planes + image-level texture)."""
    rng = np.random.default_rng(seed)
    n_obj, n_part, n_col, n_tex = counts
    block = max(1, size // 8)
    pixel = {"object": _blocky(rng, images, size, 2, n_obj, block),
             "part": _blocky(rng, images, size, 3, n_part, block),
             "color": _blocky(rng, images, size, 3, n_col, block)}
    image = {"texture": rng.integers(0, n_tex + 1, images)}
    names = {"object": [f"o{i}" for i in range(n_obj)], "part": [f"p{i}" for i in range(n_part)],
             "color": [f"c{i}" for i in range(n_col)], "texture": [f"t{i}" for i in range(n_tex)]}
    concepts = dis.concepts_from_label_maps(pixel, image, names)
    # Multiples of 1/8 (exact through bilinear upsampling by these factors), ReLU-like, a few dead units.
    acts = np.round(np.maximum(rng.gamma(1.5, 1.0, (images, fh, fh, units)) - 0.5, 0) * 8) / 8
    acts[..., :2] = 0.0
    acts = acts.astype(np.float32)
    # Top 2 % per unit at feature resolution (NetDissect: 0.5 %): more hits, so exact agreement covers more counts.
    k = max(1, int(0.02 * acts[..., 0].size))
    th = np.sort(acts.reshape(-1, units), 0)[-k] - 1.0 / 4096   # between representable upsampled values
    dead = acts.reshape(-1, units).max(0) == acts.reshape(-1, units).min(0)
    return acts, th.astype(np.float32), dead, concepts


def tally_case(images: int, fh: int, units: int, size: int, counts, device: str | None = None,
               max_labels: int = 16) -> Case:
    import torch

    device = device or harness.torch_device()
    from jinterp.bench import torch_basis

    acts, th, dead, cs = tally_inputs(images, fh, units, size, counts)
    n_cat, n_c = len(cs.categories), cs.num_concepts
    valid = np.arange(images) < images - 1           # last image counts as batch padding
    rh = dis._bilinear_matrix(fh, size)
    jargs = [jnp.asarray(a) for a in (acts, th, dead, valid, cs.pixel_labels, cs.image_labels, cs.category_of,
                                      rh, rh)]
    run = functools.partial(dis._tally_batch, max_labels=max_labels, num_categories=n_cat)
    state = [dis.empty_tally(units, n_c, n_cat)]

    def jax_fn():
        state[0] = run(state[0], *jargs)
        return state[0]

    tt = lambda a: torch.from_numpy(np.array(a)).to(device)  # noqa: E731  (copy: writable)
    targs = (tt(acts), tt(th), tt(dead), tt(valid), tt(cs.pixel_labels).long(), tt(cs.image_labels).long(),
             tt(cs.category_of).long())
    tcount = torch_basis.empty_counters(units, n_c, n_cat, device)

    def torch_fn():
        return torch_basis.tally_batch(tcount, *targs, max_labels=max_labels, num_categories=n_cat)

    def check():
        j = run(dis.empty_tally(units, n_c, n_cat), *jargs)
        t = torch_basis.tally_batch(torch_basis.empty_counters(units, n_c, n_cat, device), *targs,
                                    max_labels=max_labels, num_categories=n_cat)
        return _maxdiff([(j.intersection, t[0].cpu()), (j.activated, t[1].cpu()), (j.label_count, t[2].cpu())])

    def lowered():
        return jax.jit(run).lower(dis.empty_tally(units, n_c, n_cat), *jargs)

    return Case("basis.tally", {"images": images, "feat": f"{fh}x{fh}x{units}", "labels": size, "concepts": n_c},
                jax_fn, torch_fn, check, atol=0.0, jax_lowered=lowered, items=images,
                note="one image batch into the IoU counters; exact counts")


def tally_loop_case(images: int, fh: int, units: int, size: int, counts) -> Case:
    from jinterp.bench import torch_basis

    acts, th, dead, cs = tally_inputs(images, fh, units, size, counts, seed=1)
    n_cat, n_c = len(cs.categories), cs.num_concepts
    rh = dis._bilinear_matrix(fh, size)
    valid = np.ones(images, bool)
    jargs = [jnp.asarray(a) for a in (acts, th, dead, valid, cs.pixel_labels, cs.image_labels, cs.category_of,
                                      rh, rh)]
    run = functools.partial(dis._tally_batch, max_labels=16, num_categories=n_cat)
    state = [dis.empty_tally(units, n_c, n_cat)]

    def jax_fn():
        state[0] = run(state[0], *jargs)
        return state[0]

    def loop(counters):
        return torch_basis.tally_loop(counters, acts, th, dead, cs.pixel_labels, cs.image_labels, cs.category_of,
                                      n_cat)

    fresh = lambda: (np.zeros((units, n_c + 1)), np.zeros((units, n_cat)), np.zeros(n_c + 1))  # noqa: E731
    counters = fresh()

    def check():
        j = run(dis.empty_tally(units, n_c, n_cat), *jargs)
        t = loop(fresh())
        return _maxdiff([(j.intersection, t[0]), (j.activated, t[1]), (j.label_count, t[2])])

    return Case("basis.tally_vs_ndl_loop", {"images": images, "feat": f"{fh}x{fh}x{units}", "labels": size,
                                            "concepts": n_c},
                jax_fn, lambda: loop(counters), check, atol=0.0, items=images,
                note="PyTorch column = NetDissect-Lite-style NumPy loop over images x units")


# --------------------------------------------------------------------------------------------------------------
# IBD epoch


def ibd_inputs(pixels: int, dim: int, n_c: int, max_pos: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((pixels, dim)), 0).astype(np.float32)
    rates = rng.uniform(0.01, 0.05, n_c)
    labels = rng.random((pixels, n_c)) < rates
    cfg = ibd.IBDConfig(max_positives=max_pos, val_split="pool")  # the torch twin implements the pool split's epoch
    (pt, ptm), _, (nt, ntm), _ = ibd._sample_indices(np.random.default_rng(seed), labels, cfg)
    n_neg = min(nt.shape[1], cfg.neg_ratio * pt.shape[1])
    steps = -(-(pt.shape[1] + n_neg) // cfg.batch_size)
    # A classifier mid-training (hard-negative epochs are every epoch but the first).
    w = (0.05 * rng.standard_normal((dim, n_c))).astype(np.float32)
    b = (0.1 * rng.standard_normal(n_c)).astype(np.float32)
    return cfg, x, (pt, ptm, nt, ntm), n_neg, steps, w, b


def ibd_case(pixels: int, dim: int, n_c: int, max_pos: int, device: str | None = None) -> Case:
    import torch

    device = device or harness.torch_device()
    from jinterp.bench import torch_basis

    cfg, x, (pt, ptm, nt, ntm), n_neg, steps, w, b = ibd_inputs(pixels, dim, n_c, max_pos)
    key = jax.random.key(3)
    jx = jnp.asarray(x)
    jidx = [jnp.asarray(a) for a in (pt, ptm, nt, ntm)]
    hard = jnp.asarray(True)
    run = functools.partial(ibd._epoch, cfg=cfg, n_neg=n_neg, steps=steps)
    state = [jnp.asarray(w), jnp.asarray(b)]

    def jax_fn():
        wn, bn, loss = run(state[0], state[1], jx, *jidx, key, hard)
        state[:] = [wn, bn]
        return loss

    tt = lambda a: torch.from_numpy(np.array(a)).to(device)  # noqa: E731  (copy: writable)
    tx_, tpt, tptm, tnt, tntm = tt(x), tt(pt).long(), tt(ptm), tt(nt).long(), tt(ntm)
    tkw = dict(lr=cfg.lr, batch_size=cfg.batch_size, neg_ratio=cfg.neg_ratio, n_neg=n_neg, steps=steps, loss=cfg.loss)
    tstate = [tt(w.T.copy()), tt(b)]

    def torch_fn():
        wn, bn, loss = torch_basis.ibd_epoch(tstate[0], tstate[1], tx_, tpt, tptm, tnt, tntm, True, **tkw)
        tstate[:] = [wn, bn]
        return loss

    def check():
        wj, bj, lj = run(jnp.asarray(w), jnp.asarray(b), jx, *jidx, key, hard)
        # The hard negatives: the same sets in both frameworks (counted as a difference otherwise) ...
        scores = jnp.take_along_axis((jx @ jnp.asarray(w) + jnp.asarray(b)).T, jidx[2], 1)
        order_j = np.asarray(jax.lax.top_k(jnp.where(jidx[3], scores, -jnp.inf), n_neg)[1])
        order_t = torch_basis.negative_order(tt(w.T.copy()), tt(b), tx_, tnt, tntm, n_neg).cpu().numpy()
        want = np.minimum(cfg.neg_ratio * ptm.sum(1), ntm.sum(1))
        set_mismatch = sum(set(order_j[c, :k]) != set(order_t[c, :k]) for c, k in enumerate(want))
        # ... then PyTorch replays JAX's order among them (scores equal up to rounding swap places, which reorders
        # the SGD examples) and JAX's per-concept shuffle (ibd._epoch draws it from fold_in(key, 1)).
        width = pt.shape[1] + n_neg
        perm = jax.vmap(lambda k: jax.random.permutation(k, width))(jax.random.split(jax.random.fold_in(key, 1), n_c))
        wt, bt, lt = torch_basis.ibd_epoch(tt(w.T.copy()), tt(b), tx_, tpt, tptm, tnt, tntm, True,
                                           perm=tt(perm).long(), order=tt(order_j).long(), **tkw)
        return float(set_mismatch) + _maxdiff([(wj, wt.T.cpu()), (bj, bt.cpu()), (lj, lt.cpu())])

    def lowered():
        return jax.jit(run).lower(jnp.asarray(w), jnp.asarray(b), jx, *jidx, key, hard)

    return Case("basis.ibd_epoch", {"pixels": pixels, "D": dim, "concepts": n_c, "max_pos": max_pos, "steps": steps},
                jax_fn, torch_fn, check, atol=1e-5, jax_lowered=lowered, items=n_c,
                note="hard-negative epoch, all concepts at once (vmap vs batched einsum)")


# --------------------------------------------------------------------------------------------------------------


def cases(quick: bool) -> list[Case]:
    u, t, lp, i = (UIBE_QUICK, TALLY_QUICK, LOOP_QUICK, IBD_QUICK) if quick else (UIBE, TALLY, LOOP, IBD)
    return ([uibe_case(*c) for c in u] + [uibe_polar_case(*c) for c in u] + [tally_case(*c) for c in t]
            + [tally_loop_case(*c) for c in lp]
            + [ibd_case(*c) for c in i])


def scaling_cases(quick: bool) -> list[Case]:
    """UIBE step vs pixel batch; IBD epoch vs number of concepts."""
    batches = (256, 1024) if quick else (1024, 4096, 16384)
    concepts = (4, 8) if quick else (10, 30, 100)
    return ([uibe_case(64, 63, bs) for bs in batches]
            + [ibd_case(6000 if quick else 20000, 64, c, 200 if quick else 500) for c in concepts])


def main(argv=None):
    return main_for(cases, argv, "basis")


if __name__ == "__main__":
    main()

