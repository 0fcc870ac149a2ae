"""Planted-concept check: UIBE recovers known orthonormal concept directions; dissection ranks it above a rotation.

Two generators (``jinterp.methods.basis.planted``): ``separable`` (a margin between absent/present signal values and
noise in the unused directions) where the planted basis is the objective's minimum — the recovery must reach
cos >= 0.95 — and the spec's exact setup (touching supports, no noise) where it is not: there the test pins what
the objective does instead (detectors still match the labels, IoU >= 0.9, the spec's own acceptance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.methods.basis import planted, uibe
from jinterp.metrics import dissection as dis

CFG = uibe.UIBEConfig(num_directions=3, batch_size=512, epochs=60, lr=0.1, restarts=4, standardization="global",
                      plateau_patience=5, plateau_cooldown=2)


def _concepts_in_standardized_space(g, res):
    s = g.concepts / np.asarray(res.standardizer.std)[:, None]
    return s / np.linalg.norm(s, axis=0)


@pytest.fixture(scope="module")
def separable():
    g = planted.generate(planted.PlantedConfig.separable(num_pixels=8192, seed=0))
    return g, uibe.fit(g.pixels, CFG)


def test_generator_directions_and_labels():
    g = planted.generate(planted.PlantedConfig.spec(num_pixels=1000))
    basis = np.c_[g.concepts, g.distractors]
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-10)
    assert g.labels.shape == (1000, 3) and np.all(g.labels.sum(1) == 1)          # one concept per pixel
    a_on, a_off = g.alpha[g.labels], g.alpha[~g.labels]
    assert a_on.min() >= 2.5 and a_on.max() <= 5 and a_off.min() >= 0 and a_off.max() <= 2.5
    # The signal values are exactly recoverable from the pixels along the planted directions.
    np.testing.assert_allclose((g.pixels - 10.0) @ g.concepts, g.alpha, atol=1e-4)


def test_uibe_recovers_every_planted_direction(separable):
    g, res = separable
    cos, cols = planted.recovery(res.basis, _concepts_in_standardized_space(g, res))
    assert np.all(cos >= 0.95), cos
    # Each matched detector, with its own threshold b·M, fires on its concept's pixels.
    on = np.asarray(uibe.project(res, g.pixels)) > uibe.detector_thresholds(res)
    for c in range(3):
        inter = (on[:, cols[c]] & g.labels[:, c]).sum()
        assert inter / (on[:, cols[c]] | g.labels[:, c]).sum() >= 0.95


def _s1_s2(coords, thresholds, labels, n_img=128, hw=8):
    """S¹/S² of directions via the streaming dissection, pixels arranged as n_img images of hw×hw."""
    acts = coords.reshape(n_img, hw, hw, -1)
    label_maps = (labels.argmax(1) + 1).reshape(n_img, hw, hw)
    half = n_img // 2
    th = dis.Thresholds(np.asarray(thresholds, np.float32), np.zeros(acts.shape[-1], bool))
    tables = []
    for sl in (slice(0, half), slice(half, n_img)):
        cs = dis.concepts_from_label_maps({"concept": label_maps[sl]}, {}, {"concept": ["a", "b", "c"]})
        tables.append(dis.iou(dis.tally([acts[sl][i:i + 16] for i in range(0, half, 16)], cs, th, 16), cs))
    return dis.s1_s2(*tables), dis.label_units(tables[1])


def test_dissection_ranks_uibe_above_a_random_rotation(separable):
    g, res = separable
    x = g.pixels[: 128 * 64]
    coords = np.asarray(uibe.project(res, x))
    (s1_u, s2_u), lab_u = _s1_s2(coords, uibe.detector_thresholds(res), g.labels[: len(x)])
    rot = uibe.random_rotation(jax.random.key(7), x.shape[1], 3)
    rcoords = np.asarray(uibe.standardize(res.standardizer, jnp.asarray(x))) @ rot
    # Give the rotation its best case: per-direction thresholds at the true concept frequency (1/3).
    (s1_r, s2_r), lab_r = _s1_s2(rcoords, np.quantile(rcoords, 2 / 3, axis=0), g.labels[: len(x)])
    assert lab_u.num_unique == 3 and s2_u > 2.7                   # three distinct concepts, IoU ~ 1 each
    assert s1_u > s1_r + 0.5 and s2_u > s2_r + 0.5, (s1_u, s2_u, s1_r, s2_r)


@pytest.mark.slow
def test_spec_setup_objective_prefers_other_directions_but_detectors_match_labels():
    """The spec's exact generator: touching supports leave the planted axes without margin, and with one concept
    per pixel the discriminative directions differ from the signal directions. UIBE then lands on directions with
    |cos| ~ 0.67 to the planted ones (README, "Interpretable basis"); this pins both facts: its loss is below the
    planted basis' best loss over (M, b), and its detectors still reach IoU >= 0.9 with the labels."""
    g = planted.generate(planted.PlantedConfig.spec(num_pixels=8192, seed=0))
    res = uibe.fit(g.pixels, CFG)
    s = _concepts_in_standardized_space(g, res)
    cos, cols = planted.recovery(res.basis, s)
    assert np.all(cos < 0.9), cos
    x = jnp.asarray(uibe.standardize(res.standardizer, g.pixels))
    learned = float(uibe.losses(res.params, x, CFG)[0])
    best_planted = min(
        float(uibe.losses(uibe.UIBEParams(jnp.asarray(s, jnp.float32), jnp.asarray(np.log(np.expm1(m)), jnp.float32),
                                          jnp.asarray(bm / m, jnp.float32)), x, CFG)[0])
        for m in (0.2, 0.25, 0.3, 0.35, 0.4) for bm in np.linspace(0.4, 1.2, 17))
    assert learned < best_planted - 0.3, (learned, best_planted)
    on = np.asarray(uibe.project(res, g.pixels)) > uibe.detector_thresholds(res)
    ious = [(on[:, cols[c]] & g.labels[:, c]).sum() / (on[:, cols[c]] | g.labels[:, c]).sum() for c in range(3)]
    assert min(ious) >= 0.9, ious
