"""The HTML report: self-contained (figures inlined), escapes text, and renders to a non-blank page in Chromium."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jinterp.report.figures import image_grid, save
from jinterp.report.html import Figure, Section, Table, render, write_report
from jinterp.report.screenshot import find_chromium, screenshot


def _figure(tmp_path):
    rng = np.random.default_rng(0)
    return save(image_grid([[rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(3)]],
                           col_labels=["a", "b", "c"]), tmp_path / "fig.png")


def test_report_inlines_figures_and_escapes(tmp_path):
    fig = _figure(tmp_path)
    sections = [Section("Method <A>", intro="x < y & z", tables=[Table("metrics", ["metric", "value"],
                                                                      [("IoU", 0.51234), ("n", 3)])],
                        figures=[Figure(fig, "grid"), Figure(tmp_path / "absent.png", "gone")]),
                Section("Method B", status="skipped", reason="the data has no part annotations")]
    text = render("demo", {"seed": 0}, sections, config={"a": 1})
    assert "data:image/png;base64," in text and "src=\"fig.png\"" not in text
    assert "Method &lt;A&gt;" in text and "x &lt; y &amp; z" in text
    assert "0.5123" in text and "figure missing: absent.png" in text
    assert "the data has no part annotations" in text and "class='status skipped'" in text
    path = write_report(tmp_path / "r" / "report.html", "demo", {"seed": 0}, sections)
    assert path.read_text() == render("demo", {"seed": 0}, sections)


@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not installed (Debian package 'chromium'; "
                    ".ci/run installs it)")
def test_report_renders_in_chromium(tmp_path):
    fig = _figure(tmp_path)
    path = write_report(tmp_path / "report.html", "jinterp report", {"seed": 0},
                        [Section("Figures", figures=[Figure(fig, "noise")])])
    png = screenshot(path, tmp_path / "shot.png", width=800, height=600)
    px = np.asarray(Image.open(png).convert("RGB"), np.float32)
    assert px.shape[:2] == (600, 800)
    non_white = (px.min(axis=-1) < 200).mean()
    assert non_white > 0.01, "the rendered page is blank"
    assert px.std() > 10
