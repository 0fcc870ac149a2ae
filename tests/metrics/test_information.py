"""The JAX kNN mutual information against scikit-learn's ``mutual_info_classif`` (spec B.5.2)."""

from __future__ import annotations

import numpy as np
import pytest

from jinterp.errors import JinterpError, ShapeError
from jinterp.metrics import information as info

sk = pytest.importorskip("sklearn.feature_selection")


def _fixture(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 6)) + y[:, None] * np.array([0.0, 0.4, 1.0, 2.5, 0.2, 0.0])
    x[:, 4] = np.maximum(x[:, 4] - 1.0, 0.0)            # post-ReLU style: many exact zeros
    x[: n // 3, 3] = np.round(x[: n // 3, 3])             # repeated values
    x[:, 5] = 0.0                                         # a dead filter (zero variance)
    y[0] = 3                                              # keep every class populated
    return x, y


def test_matches_sklearn_exactly_in_float64_with_its_noise():
    x, y = _fixture()
    ref = sk.mutual_info_classif(x, y, random_state=0)
    got = info.mutual_info_classif(x, y, noise=info.sklearn_noise(x.shape, 0))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    # float32 inputs are computed in float64 too (the default precision): same result.
    got32in = info.mutual_info_classif(x.astype(np.float32), y, noise=info.sklearn_noise(x.shape, 0))
    np.testing.assert_allclose(got32in, sk.mutual_info_classif(x.astype(np.float32), y, random_state=0),
                               rtol=1e-9, atol=1e-12)
    assert ref[3] > 0.3 and ref[0] < 0.05  # the fixture spans informative and uninformative columns


def test_mis_matches_sklearn_per_class_loop_and_float32_is_close():
    x, y = _fixture(seed=1)
    m_ref = np.stack([sk.mutual_info_classif(x, (y == c).astype(int), random_state=0) for c in range(4)])
    mis, m = info.mutual_information_score(x, y, 4)
    np.testing.assert_allclose(m, m_ref, rtol=1e-9, atol=1e-12)
    assert mis == pytest.approx(m_ref.max(0).mean(), rel=1e-9)
    # precision="float32": the 1e-10 jitter is lost on O(1) values, so columns with repeated nonzero values
    # (column 3) differ; the others agree closely.
    _, m32 = info.mutual_information_score(x, y, 4, precision="float32")
    cols = [0, 1, 2, 4, 5]
    assert np.abs(m32[:, cols] - m_ref[:, cols]).max() < 0.02
    assert np.abs(m32[:, 3] - m_ref[:, 3]).max() > 0.05


def test_singleton_labels_are_ignored_like_sklearn():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 2))
    y = np.r_[np.zeros(15, int), np.ones(14, int), [2]]  # label 2 occurs once
    x[:15] += 1.5
    ref = sk.mutual_info_classif(x, y, random_state=0)
    got = info.mutual_info_classif(x, y, noise=info.sklearn_noise(x.shape, 0))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_errors_and_density():
    with pytest.raises(ShapeError, match="pool spatial maps"):
        info.mutual_info_classif(np.zeros((4, 2, 2)), np.zeros(4, int))
    with pytest.raises(ShapeError, match="labels"):
        info.mutual_info_classif(np.zeros((4, 2)), np.zeros(3, int))
    assert float(info.gate_density(np.array([[1.0, 0.0], [0.5, 0.5]]))) == 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_mis_rejects_non_finite_features_with_a_jinterp_error(bad):
    x = np.random.default_rng(0).normal(size=(12, 3))
    x[4, 1] = bad
    y = np.arange(12) % 2
    with pytest.raises(JinterpError, match="NaN/Inf.*columns \\[1\\]"):
        info.mutual_information_score(x, y, 2)
    with pytest.raises(JinterpError, match="NaN/Inf"):
        info.mutual_info_classif(x, y)


def test_mis_rejects_labels_outside_the_classes():
    x = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.raises(JinterpError, match="num_classes"):
        info.mutual_information_score(x, np.arange(12) % 3, 2)


def test_filter_mis_uses_spatial_means_of_the_maps_and_refuses_logits():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    maps = rng.normal(size=(40, 3, 3, 5))
    maps[..., 0] += 3 * (y == 1)[:, None, None]  # filter 0 fires for class 1 only
    mis, m = info.filter_mis(maps, y, 4)
    ref, m_ref = info.mutual_information_score(maps.mean((1, 2)), y, 4)
    assert mis == pytest.approx(ref) and m.argmax(0)[0] == 1 and m[1, 0] > 0.3
    logits = rng.normal(size=(40, 4))
    with pytest.raises(JinterpError, match="not on logits"):
        info.filter_mis(logits, y, 4)
