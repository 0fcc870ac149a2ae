"""Shared figure helpers: display scaling and a grid that really draws the images it is given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jinterp.errors import ShapeError
from jinterp.report.figures import image_grid, save, to_display


def test_to_display_ranges():
    u8 = np.full((2, 4, 4, 3), 255, np.uint8)
    np.testing.assert_allclose(to_display(u8), 1.0)
    z = np.random.default_rng(0).normal(size=(2, 5, 5, 1)) * 10
    d = to_display(z)
    assert d.shape == (2, 5, 5)
    for img in d:  # per-image min-max
        assert img.min() == 0.0 and img.max() == 1.0
    unit = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(to_display(unit), unit)
    with pytest.raises(ShapeError):
        to_display(np.zeros(3))


def test_grid_saves_a_png_with_the_images(tmp_path):
    white = np.full((8, 8, 3), 255, np.uint8)
    black = np.zeros((8, 8, 3), np.uint8)
    fig = image_grid([[white, black], [black, None]], row_labels=["a", "b"], col_labels=["x", "y"])
    path = save(fig, tmp_path / "sub" / "g.png")
    assert path.is_file() and not (tmp_path / "sub" / "g.png.tmp").exists()
    px = np.asarray(Image.open(path).convert("L"), np.float32)
    assert px.min() < 10 and px.max() > 245  # both the black and the white cells were drawn
    with pytest.raises(ShapeError):
        image_grid([])
