"""IBD concept classifiers: joint (vmapped) training, hard-negative mining, decomposition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from jinterp.errors import ConfigError, DataError, ShapeError
from jinterp.methods.basis import ibd, planted


@pytest.fixture(scope="module")
def trained():
    g = planted.generate(planted.PlantedConfig.spec(labels="independent", num_pixels=6000, seed=1))
    labels = np.c_[g.labels, np.zeros((len(g.labels), 1), bool)]   # a 4th concept without positives is skipped
    return g, ibd.fit(g.pixels, labels, ibd.IBDConfig(epochs=8, max_positives=600))


def test_probes_reach_ap_near_one_on_planted_concepts(trained):
    g, res = trained
    assert res.concepts.tolist() == [0, 1, 2]
    assert np.all(res.val_ap > 0.97), res.val_ap
    assert np.all(res.history[-1] < res.history[0])
    # The filters point along the planted concept directions (independent labels: decoding = encoding).
    w = res.weights / np.linalg.norm(res.weights, axis=0)
    assert np.all(np.abs(np.sum(w * g.concepts, 0)) > 0.8)


def test_average_precision_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) + y
    assert ibd.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_hard_negatives_are_the_highest_scoring_pool_members():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    labels = np.zeros((200, 1), bool)
    labels[:10, 0] = True
    cfg = ibd.IBDConfig(epochs=1, batch_size=4096, neg_pool_ratio=10, neg_ratio=2, val_fraction=0.5, lr=0.0)
    (pt, ptm), _, (nt, ntm), _ = ibd._sample_indices(np.random.default_rng(0), labels, cfg)
    w = jnp.asarray([[1.0], [0.0], [0.0], [0.0]])
    # lr = 0: parameters unchanged; the loss of the epoch equals the MSE on positives + the chosen negatives.
    n_neg = 2 * pt.shape[1]
    _, _, loss = ibd._epoch(w, jnp.zeros(1), jnp.asarray(x), jnp.asarray(pt), jnp.asarray(ptm), jnp.asarray(nt),
                            jnp.asarray(ntm), jax.random.key(0), jnp.asarray(True), cfg=cfg, n_neg=n_neg, steps=1)
    pool = nt[0][ntm[0]]
    hardest = pool[np.argsort(-x[pool, 0])[:n_neg]]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expect = np.concatenate([(sig(x[pt[0], 0]) - 1) ** 2, sig(x[hardest, 0]) ** 2]).mean()
    assert float(loss[0]) == pytest.approx(expect, rel=1e-5)


def test_decomposition_recovers_a_sparse_combination_and_is_exact():
    rng = np.random.default_rng(4)
    q = ibd.unbias(rng.normal(size=(32, 10)))
    np.testing.assert_allclose(np.linalg.norm(q, axis=0), 1, atol=1e-6)
    np.testing.assert_allclose(q.mean(0), 0, atol=1e-6)
    v = 2.0 * q[:, 3] + 0.7 * q[:, 8] + 0.01 * rng.normal(size=32)
    d = ibd.decompose(v, q, k=2)
    assert sorted(d.concepts.tolist()) == [3, 8]
    np.testing.assert_allclose(sorted(d.coefficients), [0.7, 2.0], atol=0.05)
    np.testing.assert_allclose(q[:, d.concepts] @ d.coefficients + d.residual, v, atol=1e-10)
    assert np.linalg.norm(d.residual) < 0.1
    neg = ibd.decompose(-q[:, 1] + 0.5 * q[:, 2], q, k=2, nonneg=True)
    assert np.all(neg.coefficients > 0) and 1 not in neg.concepts.tolist()


def test_bad_inputs():
    with pytest.raises(ShapeError, match="same P"):
        ibd.fit(np.zeros((10, 3), np.float32), np.zeros((9, 2), bool))
    with pytest.raises(DataError, match="positive pixels"):
        ibd.fit(np.ones((10, 3), np.float32), np.zeros((10, 2), bool))
    with pytest.raises(ConfigError, match="loss"):
        ibd.fit(np.ones((10, 3), np.float32), np.ones((10, 2), bool), ibd.IBDConfig(loss="hinge"))
    with pytest.raises(ShapeError):
        ibd.decompose(np.zeros(3), np.zeros((4, 2)))
