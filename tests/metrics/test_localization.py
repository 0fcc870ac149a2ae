"""Location instability and part-localization metrics against plain loop transcriptions of the MATLAB code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jinterp.errors import ConfigError, ShapeError
from jinterp.metrics import localization as loc


def matlab_var(x):
    x = list(x)
    if not x:
        return float("nan")
    if len(x) == 1:
        return 0.0
    m = sum(x) / len(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


def ref_per_unit(pos, score, lm, vis, variant, top_n, valid=None):
    """Loop transcription of getDistSqrtVar.m (EG: simple_func/, ICNN: tool/main/)."""
    n, u, _ = pos.shape
    p = lm.shape[1]
    out = np.zeros(u)
    for j in range(u):
        imgs = [i for i in range(n) if valid is None or valid[i, j]]
        order = sorted(imgs, key=lambda i: -score[i, j])  # Python sort is stable, like MATLAB's
        total = 0.0
        for k in range(p):
            if variant == "graph":
                kept = [i for i in order[:top_n] if vis[i, k]]
                d = [math.dist(lm[i, k], pos[i, j]) for i in kept]
                total += math.sqrt(matlab_var(d))
            else:
                kept = [i for i in order if vis[i, k]][:top_n]
                if len(kept) < 2:
                    total = float("nan")
                    continue
                d = [math.dist(lm[i, k], pos[i, j]) for i in kept]
                total += math.sqrt(matlab_var(d))
        out[j] = total / p
    return out


def ref_value(pos, score, lm, vis, size, variant, top_n, num_units=None, ratio=1.0):
    per = ref_per_unit(pos, score, lm, vis, variant, top_n)
    n, u, _ = pos.shape
    diag = math.hypot(size, size)
    if variant == "graph":
        means = [sum(sorted(score[:, j], reverse=True)[:top_n]) / min(top_n, n) for j in range(u)]
        sel = sorted(range(u), key=lambda j: -means[j])[:num_units]
        vals = [per[j] for j in sel if not math.isnan(per[j])]
        return sum(vals) / len(vals) / diag
    vals = sorted(v for v in per if not math.isnan(v))[:round(u * ratio)]
    return sum(vals) / len(vals) / diag


def random_case(seed, n=23, u=7, p=3, ties=False):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 64, (n, u, 2))
    score = rng.integers(0, 4, (n, u)).astype(float) if ties else rng.normal(size=(n, u))
    lm = rng.uniform(0, 64, (n, p, 2))
    vis = rng.random((n, p)) < 0.7
    return pos, score, lm, vis


@pytest.mark.parametrize("variant", ["graph", "icnn"])
@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_instability_matches_loop_reference(variant, seed, ties):
    pos, score, lm, vis = random_case(seed, ties=ties)
    top_n = 5
    res = loc.location_instability(pos, score, lm, vis, 64, variant=variant, top_n=top_n, num_units=4)
    ref = ref_per_unit(pos, score, lm, vis, variant, top_n)
    np.testing.assert_allclose(res.per_unit, ref, rtol=1e-12, equal_nan=True)
    assert res.value == pytest.approx(ref_value(pos, score, lm, vis, 64, variant, top_n, num_units=4), rel=1e-12)


def test_icnn_select_ratio_keeps_most_stable_units():
    pos, score, lm, vis = random_case(3, n=40, u=10)
    res = loc.location_instability(pos, score, lm, vis, 64, variant="icnn", top_n=8, select_ratio=0.5)
    assert res.value == pytest.approx(ref_value(pos, score, lm, vis, 64, "icnn", 8, ratio=0.5), rel=1e-12)
    assert len(res.selected) == 5 and np.all(np.diff(res.per_unit[res.selected]) >= 0)


def test_valid_mask_removes_images_from_ranking():
    pos, score, lm, vis = random_case(4, n=30, u=5)
    valid = np.random.default_rng(5).random((30, 5)) < 0.6
    for variant in ("graph", "icnn"):
        res = loc.location_instability(pos, score, lm, vis, 64, variant=variant, top_n=6, valid=valid)
        ref = ref_per_unit(pos, score, lm, vis, variant, 6, valid=valid)
        np.testing.assert_allclose(res.per_unit, ref, rtol=1e-12, equal_nan=True)


def test_units_on_landmarks_are_perfectly_stable():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 100, (12, 2, 2))
    pos = np.repeat(lm[:, :1], 3, axis=1)  # every unit sits on landmark 0 ...
    pos[:, 1] += 5.0  # ... or at a fixed offset from it
    score = rng.random((12, 3))
    vis = np.ones((12, 2), bool)
    res = loc.location_instability(pos, score, lm[:, :1], vis[:, :1], 100, variant="icnn", top_n=10)
    np.testing.assert_allclose(res.per_unit, 0.0, atol=1e-12)
    assert res.value == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_five_image_toy_set():
    # One unit, one landmark at the origin; distances 0, 3, 4, 5, 12 via positions on the x axis/Pythagoras.
    pos = np.array([[[0, 0]], [[3, 0]], [[0, 4]], [[3, 4]], [[12, 0]]], float)
    lm = np.zeros((5, 1, 2))
    score = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]])
    vis = np.array([[True], [True], [False], [True], [True]])
    # graph: top-3 images = {0, 1, 2}, image 2 invisible -> dists {0, 3} -> std = sqrt(4.5)
    g = loc.location_instability(pos, score, lm, vis, 10, variant="graph", top_n=3, num_units=1)
    assert g.per_unit[0] == pytest.approx(math.sqrt(4.5))
    assert g.value == pytest.approx(math.sqrt(4.5) / math.hypot(10, 10))
    # icnn: visible first -> {0, 1, 3, 4}, first 3 -> dists {0, 3, 5} -> sample std with N-1
    d = np.array([0.0, 3.0, 5.0])
    i = loc.location_instability(pos, score, lm, vis, 10, variant="icnn", top_n=3)
    assert i.per_unit[0] == pytest.approx(d.std(ddof=1))
    # graph with top-1 = one image -> MATLAB var of a scalar = 0; icnn with < 2 images -> NaN
    assert loc.location_instability(pos, score, lm, vis, 10, variant="graph", top_n=1).per_unit[0] == 0.0
    assert np.isnan(loc.location_instability(pos, score, lm, vis, 10, variant="icnn", top_n=1).value)


def test_graph_unit_selection_by_top_scores():
    pos, score, lm, vis = random_case(6, n=20, u=6)
    score[:, 2] += 10  # unit 2 and 4 have the highest mean top-N scores
    score[:, 4] += 5
    res = loc.location_instability(pos, score, lm, vis, 64, variant="graph", top_n=5, num_units=2)
    assert list(res.selected) == [2, 4]


def test_instability_input_errors():
    pos, score, lm, vis = random_case(0)
    with pytest.raises(ConfigError, match="variant"):
        loc.location_instability(pos, score, lm, vis, 64, variant="vgg")
    with pytest.raises(ShapeError, match="scores"):
        loc.location_instability(pos, score[:, :2], lm, vis, 64)
    with pytest.raises(ShapeError, match="visible"):
        loc.location_instability(pos, score, lm, vis[:, :1], 64)


def test_cells_to_pixels_vgg_geometry():
    x = np.arange(28, dtype=float)
    # spec E1: conv4 = 4.5 + 8(x-1), conv5 = 8.5 + 16(x-1) with 1-based x
    np.testing.assert_allclose(loc.cells_to_pixels(np.stack([x, x], -1), 8, 4.5, one_based_pixels=True)[:, 0],
                               4.5 + 8 * x)
    np.testing.assert_allclose(loc.cells_to_pixels(np.stack([x, x], -1), 16, one_based_pixels=True)[:, 1],
                               8.5 + 16 * x)
    # continuous frame: (cell + 0.5) * stride = cell centres; last conv4 cell centre 220 px of 224
    assert loc.cells_to_pixels([[27.0, 0.0]], 8)[0].tolist() == [220.0, 4.0]


def test_argmax_positions_matlab_tie_order():
    maps = np.zeros((1, 3, 4, 2))
    maps[0, 2, 1, 0] = maps[0, 0, 3, 0] = maps[0, 1, 1, 0] = 7.0  # ties: column 1 first, in it row 1
    maps[0, 2, 3, 1] = 1.0
    cells, scores = loc.argmax_positions(maps)
    assert cells[0, 0].tolist() == [1, 1] and cells[0, 1].tolist() == [3, 2]
    assert scores[0].tolist() == [7.0, 1.0]


def test_normalized_distance_min_over_instances():
    pred = np.array([[10.0, 10.0], [0.0, 0.0], [5.0, 5.0]])
    gt = np.array([[[13.0, 14.0], [10.0, 11.0]], [[224.0, 224.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 2.0]]])
    valid = np.array([[True, True], [True, False], [False, False]])
    nd = loc.normalized_distance(pred, gt, valid, 224)
    np.testing.assert_allclose(nd[:2], [1.0 / (224 * math.sqrt(2)), 1.0])
    assert np.isnan(nd[2])
    out = loc.part_localization(pred, gt, valid, 224)
    assert out["num_images"] == 2 and out["normalized_distance"] == pytest.approx(nd[:2].mean())


def test_part_localization_rates():
    pred = np.array([[10.0, 10.0], [30.0, 10.0]])
    gt = np.array([[10.0, 10.0], [10.0, 10.0]])
    boxes = np.array([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    out = loc.part_localization(pred, gt, None, 64, gt_boxes=boxes)
    # image 0: exact hit (IoU 1, inside); image 1: shifted by a full box width (IoU 0, outside)
    assert out["detection_rate"] == 0.5 and out["loc_rate"] == 0.5
    pred2 = np.array([[15.0, 10.0]])  # shifted by w/4 -> IoU = 15*20 / (2*400 - 300) = 0.6
    assert loc.part_localization(pred2, gt[:1], None, 64, gt_boxes=boxes[:1])["detection_rate"] == 1.0


def test_part_transfer_recovers_consistent_units():
    rng = np.random.default_rng(0)
    n, u = 30, 20
    gt = rng.uniform(10, 50, (n, 2))
    pos = rng.uniform(0, 64, (n, u, 2))  # noise units
    pos[:, 3] = gt - np.array([4.0, -2.0])  # unit 3 sits at a fixed offset from the part
    pos[:, 7] = gt + rng.normal(0, 0.5, (n, 2))  # unit 7 nearly on it
    scores = np.ones((n, u))
    tr = loc.fit_part_transfer(pos[:3], scores[:3], gt[:3], None, 64, top_t=2)
    assert set(tr.units.tolist()) == {3, 7}
    pred = loc.predict_parts(tr, pos[3:], scores[3:])
    assert np.max(np.abs(pred - gt[3:])) < 1.5
