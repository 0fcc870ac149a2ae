"""Sanity baselines give the values they must on constructed inputs, and a unit that tracks a part beats them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jinterp.errors import JinterpError
from jinterp.metrics import baselines as bl
from jinterp.metrics import dissection as dis
from jinterp.metrics import localization as loc

SIZE = 64


def _moving_part(n=60, seed=0, spread=18.0):
    """One landmark that moves around the image; a unit that tracks it to within ~1 px; its scores."""
    rng = np.random.default_rng(seed)
    lm = SIZE / 2 + rng.uniform(-spread, spread, (n, 1, 2))
    vis = np.ones((n, 1), bool)
    tracking = lm[:, :, :] + rng.normal(0, 1.0, (n, 1, 2))
    scores = rng.uniform(0.5, 1.0, (n, 1))
    return lm, vis, tracking, scores


def test_centre_unit_on_centred_parts_is_perfectly_stable_and_localizes_exactly():
    n = 30
    lm = np.full((n, 2, 2), SIZE / 2.0)  # both parts at the image centre in every image
    vis = np.ones((n, 2), bool)
    rng = np.random.default_rng(1)
    unit_xy = rng.uniform(0, SIZE, (n, 3, 2))
    scores = rng.uniform(size=(n, 3))
    out = bl.instability_baselines(unit_xy, scores, lm, vis, SIZE, jax.random.key(0), variant="icnn")
    assert out["centre"] == pytest.approx(0.0, abs=1e-12)
    assert out["method"] > 0.05 and out["random"] > 0.05
    np.testing.assert_allclose(bl.centre_positions(4, 2, (SIZE, 2 * SIZE)), np.broadcast_to([SIZE, SIZE / 2],
                                                                                               (4, 2, 2)))
    loc_out = bl.localization_baselines(unit_xy[:, 0], lm[:3, 0], np.ones(3, bool), lm[:, 0], None, SIZE,
                                        jax.random.key(0))
    assert loc_out["centre"] == pytest.approx(0.0, abs=1e-12)
    assert loc_out["image_blind"] == pytest.approx(0.0, abs=1e-12)


def test_mean_position_unit_equals_a_static_unit_and_ignores_invalid_images():
    lm, vis, _, scores = _moving_part()
    static = np.broadcast_to(np.array([[20.0, 40.0]]), (len(lm), 1, 2)).copy()
    out = bl.instability_baselines(static, scores, lm, vis, SIZE, jax.random.key(0), variant="graph")
    assert out["mean_position"] == pytest.approx(out["method"], rel=1e-6)  # float32 positions
    xy = np.array([[[0.0, 0.0]], [[10.0, 20.0]], [[1000.0, 1000.0]]])
    valid = np.array([[True], [True], [False]])
    np.testing.assert_allclose(bl.mean_positions(xy, valid), np.broadcast_to([5.0, 10.0], (3, 1, 2)))


def test_image_blind_predictor_outputs_the_mean_of_visible_shots():
    shots = np.array([[10.0, 20.0], [30.0, 40.0], [500.0, 500.0]])
    pred = bl.image_blind_prediction(shots, np.array([True, True, False]), 5)
    np.testing.assert_allclose(pred, np.broadcast_to([20.0, 30.0], (5, 2)))
    with pytest.raises(JinterpError, match="no shot shows"):
        bl.image_blind_prediction(shots, np.zeros(3, bool), 5)


def test_random_positions_are_uniform_and_reproducible():
    a = np.asarray(bl.random_positions(jax.random.key(3), 400, 5, (32, 64)))
    b = np.asarray(bl.random_positions(jax.random.key(3), 400, 5, (32, 64)))
    np.testing.assert_array_equal(a, b)
    assert a[..., 0].min() >= 0 and a[..., 0].max() <= 64 and a[..., 1].max() <= 32
    assert abs(a[..., 0].mean() - 32) < 2 and abs(a[..., 1].mean() - 16) < 1


def test_a_unit_tracking_a_moving_part_beats_every_fixed_baseline():
    lm, vis, tracking, scores = _moving_part()
    for variant in ("graph", "icnn"):
        out = bl.instability_baselines(tracking, scores, lm, vis, SIZE, jax.random.key(0), variant=variant)
        summary = bl.instability_summary(out)
        assert summary["beats_baselines"], summary["text"]
        assert out["method"] < 0.5 * min(out["centre"], out["mean_position"], out["random"])
    # A unit that stays put where the part only moves a little does not beat them: the verdict says so in words.
    frozen = np.broadcast_to(tracking.mean(0, keepdims=True), tracking.shape)
    out = bl.instability_baselines(frozen, scores, lm, vis, SIZE, jax.random.key(0), variant="icnn")
    summary = bl.instability_summary(out)
    assert not summary["beats_baselines"] and "mean_position" in summary["beaten_by"]
    assert "does NOT beat" in summary["text"] and "its own mean position" in summary["text"]


def test_few_shot_predictor_that_tracks_beats_the_image_blind_one():
    lm, vis, tracking, scores = _moving_part(n=40, seed=2)
    transfer = loc.fit_part_transfer(tracking[:3], scores[:3], lm[:3, 0], None, SIZE, top_t=1)
    pred = loc.predict_parts(transfer, tracking[3:], scores[3:])
    out = bl.localization_baselines(pred, lm[:3, 0], np.ones(3, bool), lm[3:, 0], None, SIZE, jax.random.key(1))
    assert bl.localization_summary(out)["beats_baselines"]
    blind = np.asarray(bl.image_blind_prediction(lm[:3, 0], np.ones(3, bool), 37))
    np.testing.assert_allclose(out["image_blind"], loc.part_localization(blind, lm[3:, 0], None, SIZE)
                               ["normalized_distance"])


def test_verdict_margin_and_direction():
    assert bl.verdict("MIS", 0.3, {"random": 0.1}, lower_is_better=False)["beats_baselines"]
    assert not bl.verdict("MIS", 0.3, {"random": 0.1}, lower_is_better=False, margin=0.25)["beats_baselines"]
    assert not bl.verdict("x", 0.3, {"random": 0.1}, lower_is_better=True)["beats_baselines"]
    assert not bl.verdict("x", float("nan"), {"random": 0.1}, lower_is_better=True)["beats_baselines"]


def _planted_features(n=24, h=6, d=8, seed=0):
    """Features whose first 3 raw units are indicator maps of 3 part concepts (plus noise on the rest)."""
    rng = np.random.default_rng(seed)
    part = rng.integers(0, 4, (n, h, h))
    feats = rng.normal(0, 1.0, (n, h, h, d)).astype(np.float32)  # noise units dominate random directions
    feats[..., :3] *= 0.05
    for k in (1, 2, 3):
        feats[..., k - 1] += (part == k)
    concepts = dis.concepts_from_label_maps({"part": part}, {}, {"part": ["a", "b", "c"]})
    return feats, concepts


def test_random_basis_matches_the_target_firing_rate_and_is_orthonormal():
    feats, _ = _planted_features()
    batches = lambda: (feats[i:i + 8] for i in range(0, len(feats), 8))  # noqa: E731
    basis, th, rates = bl.random_basis_at_rate(jax.random.key(0), batches, 5, 0.11)
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(rates, 0.11, atol=1.5 / feats[..., 0].size)
    with pytest.raises(JinterpError, match="num_directions"):
        bl.random_orthonormal_basis(jax.random.key(0), 4, 5)
    with pytest.raises(JinterpError, match="firing rate"):
        bl.thresholds_at_rate(batches, 1.0)


def test_natural_basis_on_planted_units_beats_a_random_basis_at_the_same_rate():
    feats, concepts = _planted_features()
    tr, va = slice(0, 12), slice(12, 24)
    c_tr = dis.ConceptSet(concepts.pixel_labels[tr], concepts.image_labels[tr], concepts.names,
                          concepts.category_of, concepts.categories)
    c_va = dis.ConceptSet(concepts.pixel_labels[va], concepts.image_labels[va], concepts.names,
                          concepts.category_of, concepts.categories)
    f_tr = lambda: iter([feats[tr]])  # noqa: E731
    f_va = lambda: iter([feats[va]])  # noqa: E731
    nat = bl.natural_basis(8)
    nat_tr, nat_va = bl.project_batches(f_tr, nat), bl.project_batches(f_va, nat)
    nat_th = bl.thresholds_at_rate(nat_tr, 0.2)
    nat_scores = bl.basis_scores(nat_tr, nat_va, c_tr, c_va, nat_th, 12)
    rate = float(bl.firing_rates(nat_tr(), nat_th).mean())
    basis, th, _ = bl.random_basis_at_rate(jax.random.key(0), f_tr, 8, rate)
    rnd = bl.basis_scores(bl.project_batches(f_tr, basis), bl.project_batches(f_va, basis), c_tr, c_va, th, 12)
    assert abs(rnd["firing_rate_train"] - nat_scores["firing_rate_train"]) < 0.01
    assert nat_scores["S1"] > rnd["S1"] + 0.5
    assert nat_scores["unique_detectors"] == 3
    assert bl.verdict("natural S1", nat_scores["S1"], {"random": rnd["S1"]}, lower_is_better=False)["beats_baselines"]


def test_on_articulated_synthparts_a_part_tracker_beats_the_fixed_units():
    """Three units, each following one part of the lamp to ±1 px, against the same units frozen in place."""
    from jinterp.data import SynthPartsConfig, generate

    d = generate(160, seed=0, config=SynthPartsConfig.articulated(num_categories=2, occluders=(0, 0)))
    keep = d["label"] == 0                                   # lamp: triangle, bar, square
    lm, vis = d["landmarks"][keep][:, :3].astype(np.float64), d["landmark_visible"][keep][:, :3]
    n = len(lm)
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.5, 1.0, (n, 3))
    tracking = lm + rng.normal(0, 1.0, lm.shape)             # unit j tracks part j
    out = bl.instability_baselines(tracking, scores, lm, vis, 64, jax.random.key(0), variant="icnn")
    assert bl.instability_summary(out)["beats_baselines"], out
    assert out["method"] < 0.5 * min(out["centre"], out["mean_position"])
