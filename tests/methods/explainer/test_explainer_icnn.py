"""ICNN filter loss and mask: NumPy loop references of the spec's formulas (B1-B3), sign/range, stability."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.methods.explainer import icnn


# ------------------------------------------------------------------------------------------ NumPy references
def np_templates(h, w, beta, tau):
    """Spec B1 templates by explicit loops: T_mu(a,b) = tau*max(1 - beta*(|a-mu_a|/h + |b-mu_b|/w), -1)."""
    ts = []
    for ma in range(h):
        for mb in range(w):
            t = np.empty((h, w))
            for a in range(h):
                for b in range(w):
                    t[a, b] = tau * max(1 - beta * (abs(a - ma) / h + abs(b - mb) / w), -1)
            ts.append(t)
    ts.append(np.full((h, w), -tau))
    return ts


def np_filter_mi(x, beta=4.0):
    """MI(X;T) per filter with the plain formula (no log-sum-exp), float64, loops over filters and templates."""
    b, h, w, c = x.shape
    tau = 0.5 / (h * w)
    alpha = h * w / (1 + h * w)
    ts = np_templates(h, w, beta, tau)
    priors = [alpha / (h * w)] * (h * w) + [1 - alpha]
    out = np.zeros(c)
    for ch in range(c):
        maps = x[..., ch].astype(np.float64)
        # p(x|T) = exp(tr(x.T)) / sum_x' exp(tr(x'.T))
        pxt = np.array([[math.exp(np.sum(maps[i] * t)) for i in range(b)] for t in ts])   # (M, B)
        pxt /= pxt.sum(axis=1, keepdims=True)
        px = sum(priors[m] * pxt[m] for m in range(len(ts)))
        mi = 0.0
        for m in range(len(ts)):
            for i in range(b):
                mi += priors[m] * pxt[m, i] * math.log(pxt[m, i] / px[i])
        out[ch] = mi
    return out


def np_surrogate_grad(x, mask, positive, coef, alpha=0.5):
    """Spec B2 transcribed literally (float64, per filter and image)."""
    x = x.astype(np.float64)
    mask = mask.astype(np.float64)
    b, h, w, c = x.shape
    mask_rev = mask[::-1, :, :, ::-1]
    g = np.zeros_like(x)
    for d in range(c):
        s = np.array([np.mean(x[i, :, :, d] * mask[i, :, :, d]) for i in range(b)])
        s_rev = np.array([np.mean(x[i, :, :, d] * mask_rev[i, :, :, d]) for i in range(b)])
        lpos = alpha * math.log(np.mean(np.exp(s_rev / alpha)))
        wpos = np.exp(s / alpha) * (s - lpos + alpha)
        pos = [i for i in range(b) if positive[i]]
        neg = [i for i in range(b) if not positive[i]]
        for i in pos:
            g[i, :, :, d] -= mask[i, :, :, d] * wpos[i] / np.mean(wpos[pos]) * coef
        sneg = np.array([np.mean(x[i, :, :, d]) for i in range(b)])
        lneg = alpha * math.log(np.mean(np.exp(-sneg / alpha)))
        wneg = np.exp(-sneg / alpha) * (-sneg - lneg + alpha)
        for i in neg:
            g[i, :, :, d] += wneg[i] / np.mean(wneg[neg]) * coef
    return g


# Jitted once per shape: eager dispatch of the many small ops is what costs time on a loaded CPU.
filter_loss = jax.jit(icnn.filter_loss)
filter_mi = jax.jit(icnn.filter_mi)
apply_mask = jax.jit(icnn.apply_mask, static_argnums=2)
surrogate_grad = jax.jit(icnn.surrogate_grad)
loss_grad = jax.jit(jax.grad(lambda z, beta: jnp.sum(icnn.filter_loss(z, beta))))


def _maps(seed=0, b=6, h=4, w=5, c=3, scale=30.0):
    rng = np.random.default_rng(seed)
    return (rng.gamma(0.6, 1.0, (b, h, w, c)) * scale / (h * w) * 8).astype(np.float32)


# ------------------------------------------------------------------------------------------------- exact loss
@pytest.mark.parametrize("beta", [4.0, 1.5])
def test_filter_mi_equals_numpy_loop_reference(beta):
    x = _maps()
    np.testing.assert_allclose(np.asarray(filter_mi(jnp.asarray(x), beta)), np_filter_mi(x, beta),
                               rtol=2e-4, atol=1e-6)
    # Per-filter beta gives each filter its own templates.
    betas = np.array([4.0, 1.5, 2.5], np.float32)
    got = np.asarray(filter_mi(jnp.asarray(x), jnp.asarray(betas)))
    want = np.array([np_filter_mi(x[..., i:i + 1], float(betas[i]))[0] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_filter_loss_sign_range_and_single_bump_decrease():
    h = w = 6
    rng = np.random.default_rng(1)
    b, c = 12, 2
    diffuse = rng.uniform(0, 1, (b, h, w, c)).astype(np.float32) * 20
    loss_diffuse = np.asarray(filter_loss(jnp.asarray(diffuse)))
    bound = math.log(h * w + 1)
    assert np.all(loss_diffuse <= 0) and np.all(loss_diffuse >= -bound)
    # The same total activation concentrated in one bump per image (at an image-specific location that stays
    # fixed while the bump grows): the loss is lower, and decreases as the bump gets stronger.
    locs = rng.integers(0, h, (b, c, 2))
    prev = None
    for amp in (0.0, 20.0, 100.0, 400.0, 2000.0):
        bump = np.zeros((b, h, w, c), np.float32)
        for i in range(b):
            for ch in range(c):
                bump[i, locs[i, ch, 0], locs[i, ch, 1], ch] = amp
        loss = np.asarray(filter_loss(jnp.asarray(bump)))
        assert np.all(loss <= 1e-6) and np.all(loss >= -bound)
        if prev is not None:
            assert np.all(loss < prev), (amp, loss, prev)
        prev = loss
    same_mass = np.zeros_like(diffuse)
    for i in range(b):
        for ch in range(c):
            same_mass[i, locs[i, ch, 0], locs[i, ch, 1], ch] = diffuse[i, ..., ch].sum()
    assert np.all(np.asarray(filter_loss(jnp.asarray(same_mass))) < loss_diffuse)
    # Identical maps in every image carry no information about the template: MI = 0.
    same = np.repeat(same_mass[:1], b, axis=0)
    np.testing.assert_allclose(np.asarray(filter_loss(jnp.asarray(same))), 0.0, atol=1e-6)


def test_gradient_descent_on_the_loss_concentrates_activation():
    x0 = jnp.asarray(_maps(3, b=8, h=5, w=5, c=1, scale=200.0))
    f = lambda x: jnp.sum(filter_loss(jax.nn.relu(x)))
    step = jax.jit(lambda x: x - 50.0 * jax.grad(f)(x))
    x = x0
    for _ in range(30):
        x = step(x)
    assert float(f(x)) < float(f(x0)) - 0.05


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e6, 1e30])
def test_no_nan_for_extreme_inputs(scale):
    x = jnp.asarray(_maps(4)) * scale
    for beta in (0.0, 4.0, 1e8):
        loss = filter_loss(x, beta)
        g = loss_grad(x, beta)
        assert np.all(np.isfinite(np.asarray(loss))) and np.all(np.isfinite(np.asarray(g)))
    for beta in (jnp.array([jnp.nan, jnp.inf, -jnp.inf]), jnp.array([0.0, 1e30, 2.0])):
        y, mask = apply_mask(x, beta)
        assert np.all(np.isfinite(np.asarray(mask))) and np.all(np.isfinite(np.asarray(y)))
        nb = jax.jit(lambda x, m, b: icnn.update_beta(b, icnn.beta_target(x, m)))(x, mask, beta)
        assert np.all(np.isfinite(np.asarray(nb))) and np.all(np.asarray(nb) >= 0.5)
    pos = jnp.array([1, 1, 0, 1, 0, 1], jnp.float32)
    _, mask = apply_mask(x, jnp.full((3,), 2.0))
    assert np.all(np.isfinite(np.asarray(surrogate_grad(x, mask, pos, 1e-6))))


# ------------------------------------------------------------------------------------------------------- mask
def test_mask_shape_value_and_peak_at_the_part_location():
    b, h, w, c = 3, 7, 5, 4
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 0.1, (b, h, w, c)).astype(np.float32)
    peaks = rng.integers(0, [h, w], (b, c, 2))
    for i in range(b):
        for ch in range(c):
            x[i, peaks[i, ch, 0], peaks[i, ch, 1], ch] = 50.0
    beta = jnp.asarray([0.5, 1.0, 2.0, 100.0])
    y, mask = apply_mask(jnp.asarray(x), beta, "argmax")
    assert mask.shape == y.shape == (b, h, w, c)
    m = np.asarray(mask)
    ry, cx = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
    for i in range(b):
        for ch in range(c):
            r0, c0 = peaks[i, ch]
            assert m[i, r0, c0, ch] == pytest.approx(1.0)
            assert np.unravel_index(np.argmax(m[i, ..., ch]), (h, w)) == (r0, c0)
            want = np.maximum(1 - float(beta[ch]) * (np.abs(ry[:, None] - ry[r0]) + np.abs(cx[None] - cx[c0])), -1)
            np.testing.assert_allclose(m[i, ..., ch], want, rtol=1e-5, atol=1e-6)
    assert m.min() >= -1.0 and np.all(np.asarray(y) >= 0)
    # The centroid of a strong single peak is that peak; the centroid rounds a two-cell mass to the middle.
    np.testing.assert_array_equal(np.asarray(icnn.part_location(jnp.asarray(x), "centroid")), peaks)
    two = np.zeros((1, 5, 5, 1), np.float32)
    two[0, 0, 0, 0] = two[0, 4, 4, 0] = 1.0
    np.testing.assert_array_equal(np.asarray(icnn.part_location(jnp.asarray(two))), [[[2, 2]]])
    # An all-zero map: the release's Σx floor puts the location at (0, 0); nothing is NaN.
    z = icnn.part_location(jnp.zeros((1, 3, 3, 1)))
    np.testing.assert_array_equal(np.asarray(z), [[[0, 0]]])
    # The mask is a constant for differentiation: d sum(y)/dx = max(mask, 0) where x > 0.
    g = jax.grad(lambda z: jnp.sum(apply_mask(z, beta, "argmax")[0]))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), np.maximum(m, 0) * (x > 0), atol=1e-6)


def test_beta_target_and_update_follow_the_release_rule():
    b, h, w, c = 5, 6, 6, 2
    x = _maps(7, b, h, w, c)
    beta = jnp.asarray([2.0, 2.0])
    _, mask = apply_mask(jnp.asarray(x), beta)
    loc = np.asarray(icnn.part_location(jnp.asarray(x)))
    m = np.asarray(mask)
    target = []
    for ch in range(c):
        sig, s = [], []
        for i in range(b):
            r, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            d2 = (r - loc[i, ch, 0]) ** 2 + (cc - loc[i, ch, 1]) ** 2
            sig.append(math.sqrt(np.sum(d2 * x[i, ..., ch]) / np.sum(x[i, ..., ch])))
            s.append(np.mean(x[i, ..., ch] * m[i, ..., ch]))
        sbar = np.dot(s, sig) / np.sum(s)
        target.append(min(max(3.0 / sbar, 1.5), 3.0))
    got = np.asarray(icnn.beta_target(jnp.asarray(x), mask))
    np.testing.assert_allclose(got, target, rtol=1e-5)
    new = np.asarray(icnn.update_beta(beta, jnp.asarray(got), rate=0.05))
    np.testing.assert_allclose(new, 2.0 + 0.05 * (np.asarray(target) - 2.0), rtol=1e-6)
    # A NaN target (no activation at all) leaves beta unchanged.
    np.testing.assert_allclose(np.asarray(icnn.update_beta(beta, jnp.asarray([jnp.nan, 1.5]), 0.05))[0], 2.0)


# ------------------------------------------------------------------------------------------ surrogate gradient
def test_surrogate_gradient_equals_numpy_transcription_and_custom_vjp():
    x = _maps(8, b=6, h=4, w=4, c=3, scale=3.0)
    positive = np.array([1, 0, 1, 1, 0, 1], np.float32)
    _, mask = apply_mask(jnp.asarray(x), jnp.asarray([2.0, 1.0, 3.0]))
    coef = 1e-6 / 3  # release: 1e-5 / (mag 0.1 * 10... ) / epoch 3
    want = np_surrogate_grad(x, np.asarray(mask), positive, coef)
    got = np.asarray(surrogate_grad(jnp.asarray(x), mask, jnp.asarray(positive), coef))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-12)
    # Through jax.grad: the custom_vjp returns exactly the surrogate (times the cotangent, here lam = 2),
    # and its value is the exact loss.
    f = lambda z: 2.0 * icnn.surrogate_filter_loss(z, mask, jnp.asarray(positive), jnp.float32(coef))
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x)))
    np.testing.assert_allclose(g, 2 * want, rtol=1e-4, atol=1e-12)
    value = float(icnn.surrogate_filter_loss(jnp.asarray(x), mask, jnp.asarray(positive), jnp.float32(coef)))
    assert value == pytest.approx(float(jnp.sum(filter_loss(jnp.asarray(x)))), rel=1e-6)
    # All-positive batch (the explainer's case): no uniform negative term, every gradient is -mask * weight.
    allpos = np.ones(6, np.float32)
    np.testing.assert_allclose(
        np.asarray(surrogate_grad(jnp.asarray(x), mask, jnp.asarray(allpos), coef)),
        np_surrogate_grad(x, np.asarray(mask), allpos, coef), rtol=1e-4, atol=1e-12)


def test_surrogate_gradient_is_finite_where_the_release_overflows():
    # s/alpha ~ 1e4: exp() overflows in the literal formula; the max-shifted form is exact and finite.
    x = np.full((4, 3, 3, 1), 5000.0, np.float32)
    x[1] *= 1.001
    _, mask = apply_mask(jnp.asarray(x), jnp.asarray([2.0]))
    g = np.asarray(surrogate_grad(jnp.asarray(x), mask, jnp.ones(4), 1.0))
    assert np.all(np.isfinite(g))
    # The weights are normalized by their positive-image mean: mean over images of -g/mask at the peak is 1.
    peak = -g[:, 1, 1, 0] / np.asarray(mask)[:, 1, 1, 0]
    assert peak.mean() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("scale", [0.3, 30.0])
def test_robust_logsumexp_gradient_is_the_softmax(scale):
    """The overflow clamps must not touch the gradient: ∂ logsumexp/∂v = softmax(v), also for the max term, which
    always sits on the clamp (a ``minimum``/``maximum`` clamp split its gradient at that tie and halved it)."""
    v = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)) * scale, jnp.float32)
    for axis in (0, 1):
        got = jax.grad(lambda u, a=axis: jnp.sum(icnn.logsumexp(u, a) * jnp.arange(1.0, 1 + u.shape[1 - a])))(v)
        want = jax.nn.softmax(v, axis=axis) * jnp.expand_dims(jnp.arange(1.0, 1 + v.shape[1 - axis]), axis)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_filter_loss_gradient_matches_finite_differences():
    """The exact loss's gradient (what the explainer trains with) against central differences. The loss computes
    in float32, so the step is 1e-2 on maps of scale ~10 (peaked scores: the max term's gradient matters)."""
    x = np.abs(np.random.default_rng(1).normal(size=(4, 3, 3, 2))).astype(np.float32) * 40.0
    f = jax.jit(lambda a: jnp.sum(icnn.filter_loss(a)))
    g = np.asarray(jax.grad(lambda a: jnp.sum(icnn.filter_loss(a)))(jnp.asarray(x)))
    eps = 1e-2
    for i in [(0, 1, 1, 0), (2, 0, 2, 1), (3, 2, 0, 0), (1, 1, 2, 1), (0, 0, 0, 1)]:
        d = np.zeros_like(x)
        d[i] = eps
        fd = (float(f(jnp.asarray(x + d))) - float(f(jnp.asarray(x - d)))) / (2 * eps)
        assert abs(g[i] - fd) <= 2e-4 + 2e-2 * abs(fd), (i, g[i], fd)
