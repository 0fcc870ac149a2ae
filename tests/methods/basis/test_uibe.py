"""UIBE: orthonormality is exact, the losses have their stated ranges, training lowers the objective."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.errors import ConfigError, ShapeError
from jinterp.methods.basis import uibe


def _pixels(n=4096, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.gamma(1.0, 1.0, (n, d)) @ rng.normal(size=(d, d))).astype(np.float32)


def test_orthonormalize_gives_exact_stiefel_points():
    a = jax.random.normal(jax.random.key(0), (12, 5))
    q = uibe.orthonormalize(a)
    np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-5)
    # Idempotent: an orthonormal input is returned unchanged (sign-fixed QR).
    np.testing.assert_allclose(uibe.orthonormalize(q), q, atol=1e-5)


def test_loss_ranges_and_one_hot_limit():
    cfg = uibe.UIBEConfig(num_directions=4)
    x = jnp.asarray(_pixels(256, 6))
    params = uibe.init_params(jax.random.key(1), np.asarray(x), 4, cfg)
    _, (total, l_s, l_ma, l_mm) = uibe.losses(params, x, cfg)
    assert 0.0 <= float(l_s) <= math.log2(4) + 1e-5
    assert float(l_ma) >= 0.0 and float(l_mm) == pytest.approx(1.0 / float(uibe.margin(params)), rel=1e-6)
    # A pixel on which one detector is saturated and the others silent: L^s -> 0 and L^ma -> -log2 y* -> 0.
    q = np.eye(6, 4, dtype=np.float32)
    p = uibe.UIBEParams(jnp.asarray(q), jnp.asarray(math.log(math.expm1(0.01))), jnp.asarray(0.0))
    _, parts = uibe.losses(p, jnp.asarray([[1.0, -1, -1, -1, 0, 0]], jnp.float32), cfg)
    assert float(parts[1]) < 1e-3 and float(parts[2]) < 1e-3


def test_fit_keeps_the_basis_orthonormal_and_lowers_the_objective():
    x = _pixels()
    cfg = uibe.UIBEConfig(num_directions=5, batch_size=512, epochs=12, lr=1e-2, restarts=2)
    res = uibe.fit(x, cfg)
    np.testing.assert_allclose(res.basis.T @ res.basis, np.eye(5), atol=1e-5)
    assert res.history.shape == (12, 4)
    assert res.history[-1, 0] < res.history[0, 0]
    coords = np.asarray(uibe.project(res, x[:10]))
    assert coords.shape == (10, 5) and np.isfinite(coords).all()
    assert uibe.detector_thresholds(res).shape == (5,)


def test_same_seed_same_basis_other_seed_differs():
    x = _pixels(2048)
    cfg = uibe.UIBEConfig(num_directions=3, batch_size=512, epochs=3)
    a, b = uibe.fit(x, cfg), uibe.fit(x, cfg)
    np.testing.assert_array_equal(a.basis, b.basis)
    c = uibe.fit(x, uibe.UIBEConfig(num_directions=3, batch_size=512, epochs=3, seed=1))
    assert not np.allclose(a.basis, c.basis)


def test_global_standardization_preserves_orthogonality():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 4)) * np.array([1.0, 3.0, 0.5, 2.0])
    s = uibe.standardizer(x, "global")
    assert np.allclose(np.asarray(s.std), np.asarray(s.std)[0])


def test_bad_inputs():
    with pytest.raises(ConfigError, match="exceeds the layer"):
        uibe.fit(_pixels(512, 4), uibe.UIBEConfig(num_directions=5, epochs=1))
    with pytest.raises(ShapeError, match=r"\(P, D\)"):
        uibe.fit(np.zeros((2, 4, 4, 3), np.float32), uibe.UIBEConfig(epochs=1))
    bad = _pixels(512, 4)
    bad[3, 1] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        uibe.fit(bad, uibe.UIBEConfig(epochs=1))
