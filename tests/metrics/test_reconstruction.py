"""Reconstruction metrics against NumPy: per-element MSE, per-image SSE, PSNR, uint8 handling."""

from __future__ import annotations

import numpy as np
import pytest

from jinterp.errors import ShapeError
from jinterp.metrics import reconstruction as rec


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((5, 6, 7, 3))
    xhat = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
    d2 = (xhat - x) ** 2
    assert float(rec.mse(xhat, x)) == pytest.approx(d2.mean(), rel=1e-5)
    assert float(rec.sse_per_image(xhat, x)) == pytest.approx(d2.sum(axis=(1, 2, 3)).mean(), rel=1e-5)
    # the two normalisations differ by exactly H·W·C
    assert float(rec.sse_per_image(xhat, x)) == pytest.approx(float(rec.mse(xhat, x)) * 6 * 7 * 3, rel=1e-5)
    assert float(rec.psnr(xhat, x)) == pytest.approx(10 * np.log10(1 / d2.mean()), rel=1e-5)
    np.testing.assert_allclose(rec.squared_error_per_image(xhat, x), d2.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_model_axis_and_uint8_inputs():
    rng = np.random.default_rng(1)
    x8 = rng.integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
    stack = rng.random((3, 4, 5, 5, 1))
    x = x8 / 255.0
    per_model = [((stack[m] - x) ** 2).mean() for m in range(3)]
    np.testing.assert_allclose(rec.mse(stack, x8, axis_models=True), per_model, rtol=1e-5)
    np.testing.assert_allclose(rec.sse_per_image(stack, x8, axis_models=True),
                               [((stack[m] - x) ** 2).sum(axis=(1, 2, 3)).mean() for m in range(3)], rtol=1e-5)
    assert float(rec.mse(x8, x8)) == 0.0
    np.testing.assert_array_equal(rec.to_uint8(x8 / 255.0), x8)  # round trip of stored images
    assert rec.to_uint8(np.array([-0.2, 0.5, 1.7])).tolist() == [0, 128, 255]


def test_mismatched_shapes_raise():
    with pytest.raises(ShapeError, match="same sizes"):
        rec.mse(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 1)))
