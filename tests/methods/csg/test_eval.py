"""CSG evaluation: localization maps vs references, attacks, detector AUC on planted fixtures (spec B.5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.methods.csg import adversarial as adv
from jinterp.methods.csg import localization as loc


def test_upsample_matches_torch_bilinear_align_corners_false():
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(a.transpose(0, 3, 1, 2)), size=(16, 16),
                                          mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(loc.upsample(jnp.asarray(a), (16, 16))), ref, atol=1e-5)


def test_gaussian_blur_matches_a_numpy_reflect_convolution():
    m = np.random.default_rng(1).uniform(size=(2, 20, 24)).astype(np.float32)
    k = loc.gaussian_kernel1d(7, 2.0)
    p = np.pad(m, ((0, 0), (3, 3), (3, 3)), mode="reflect")
    ref = np.zeros_like(m)
    for i in range(7):
        for j in range(7):
            ref += k[i] * k[j] * p[:, i:i + 20, j:j + 24]
    np.testing.assert_allclose(np.asarray(loc.gaussian_blur(jnp.asarray(m), 7, 2.0)), ref, atol=1e-5)
    assert k.sum() == pytest.approx(1.0) and k.argmax() == 3


def test_cam_and_activmap_find_a_planted_object():
    # An 8x8 feature map whose filter 1 fires exactly on the object's quadrant; the head weights pick filter 1.
    n, h = 4, 32
    gt = np.zeros((n, h, h), bool)
    gt[:, :16, :16] = True
    a = np.zeros((n, 8, 8, 3), np.float32)
    a[:, :4, :4, 1] = 1.0
    a[:, :, :, 0] = np.random.default_rng(0).uniform(size=(n, 8, 8))  # noise filter
    fc = np.zeros((3, 2), np.float32)
    fc[1, :] = 1.0
    ious = np.asarray(loc.cam_iou(jnp.asarray(a), jnp.asarray(fc), jnp.asarray([0, 1, 0, 1]), jnp.asarray(gt), 0.25))
    assert (ious > 0.85).all()  # top 25 % of pixels = the object's quadrant (bilinear blurs its border)
    thr = loc.activ_thresholds(jnp.asarray(a), 0.25)
    per = np.asarray(loc.activmap_iou(jnp.asarray(a), thr, jnp.asarray(gt)))
    # T_1 = 1 (the top 25 % are the ones): only pixels upsampled to exactly 1 pass, 14x14 of the 16x16 object.
    assert np.allclose(per[:, 1], 196 / 256) and (per[:, 0] < 0.5).all()
    summary = loc.activmap_summary(per, np.array([0, 1, 0, 1]), 2, 0.3)
    assert summary["per_class"][0]["rfn"] + summary["per_class"][1]["rfn"] == 3
    np.testing.assert_allclose(np.asarray(loc.iou(jnp.asarray(gt), jnp.asarray(gt))), 1.0)


def test_gradmap_of_a_linear_filter_is_its_receptive_field():
    # A "network" whose pooled filter k is the mean of the input over a box: its input gradient is that box.
    h = 32
    boxes = np.zeros((2, h, h, 3), np.float32)
    boxes[0, 4:12, 4:12] = 1.0
    boxes[1, 16:30, 10:28] = 1.0

    def apply(x):
        a = jnp.einsum("nhwc,khwc->nk", x, jnp.asarray(boxes))[:, None, None, :]
        return a.sum((1, 2, 3)), a

    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, h, h, 3)).astype(np.float32))
    gt = jnp.asarray(np.broadcast_to(boxes[1, ..., 0] > 0, (3, h, h)))
    ch = jnp.asarray([[1], [1], [0]])
    ious = np.asarray(loc.gradmap_iou(apply, x, gt, ch, 3, 0.5, 0.5))
    assert ious[0] == pytest.approx(1.0, abs=0.05) and ious[2] == 0.0
    top = np.asarray(loc.top_channels(jnp.asarray([[1.0, 5.0], [2.0, 0.0]]), jnp.asarray([0, 1]), 2, 1))
    assert top.tolist() == [[1], [0]]


def _linear_classifier():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3 * 8 * 8, 4)).astype(np.float32))
    return lambda x: x.reshape(x.shape[0], -1) @ w


def test_fgsm_increases_the_loss_and_pgd_stays_in_the_ball():
    f = _linear_classifier()
    x = jnp.asarray(np.random.default_rng(1).uniform(0.2, 0.8, size=(16, 8, 8, 3)).astype(np.float32))
    y = jnp.argmax(f(x), -1)
    loss = lambda x: np.asarray(jax.vmap(lambda lo, t: -jax.nn.log_softmax(lo)[t])(f(x), y))
    eps = 4 / 255
    xf = adv.fgsm(f, x, y, eps)
    assert (loss(xf) > loss(x)).all()
    assert float(jnp.abs(xf - x).max()) == pytest.approx(eps, rel=1e-5)
    xp = jax.jit(lambda x, y, k: adv.pgd(f, x, y, eps, 1 / 255, 8, k))(x, y, jax.random.key(0))
    assert float(jnp.abs(xp - x).max()) <= eps + 1e-6
    assert float(xp.min()) >= 0.0 and float(xp.max()) <= 1.0
    assert loss(xp).mean() >= loss(xf).mean() - 1e-4  # more steps, at least as strong on a linear model
    x0 = jnp.zeros((2, 8, 8, 3))
    assert float(adv.fgsm(f, x0, jnp.asarray([0, 1]), eps).min()) >= 0.0  # clipped to [0, 1]


def test_roc_auc_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.5, 1, 40), 1)
    neg = np.round(rng.normal(0.0, 1, 60), 1)
    ref = metrics.roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[pos, neg])
    assert adv.roc_auc(pos, neg) == pytest.approx(ref, abs=1e-6)


def test_detector_separates_a_planted_mismatch():
    # Gate: filters 0-1 belong to class 0, 2-3 to class 1. Clean samples of class c fire on c's filters; the
    # "adversarial" ones are predicted as class c while still firing on the other class's filters.
    gate = jnp.asarray([[1, 0], [1, 0], [0, 1], [0, 1]], jnp.float32)
    rng = np.random.default_rng(0)
    n = 50
    cls = rng.integers(0, 2, n)
    own = np.zeros((n, 4), np.float32)
    for i, c in enumerate(cls):
        own[i, 2 * c:2 * c + 2] = rng.uniform(0.5, 1.5, 2)
    noise = rng.uniform(0, 0.1, (n, 4)).astype(np.float32)
    clean = adv.detector_score(jnp.asarray(own + noise), jnp.asarray(cls), gate)
    attacked = adv.detector_score(jnp.asarray(own + noise), jnp.asarray(1 - cls), gate)
    assert adv.roc_auc(np.asarray(attacked), np.asarray(clean)) == 1.0
    assert float(jnp.max(clean)) < 0.2 and float(jnp.min(attacked)) > 0.8
    # The empirical profile recovers the planted gate from class means.
    prof = adv.empirical_profile(jnp.asarray(own), jnp.asarray(cls), 2)
    np.testing.assert_array_equal(np.asarray(prof > 0.5), np.asarray(gate > 0.5))
