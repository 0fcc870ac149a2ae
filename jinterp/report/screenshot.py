"""Render an HTML file to PNG with headless Chromium (Debian's ``chromium`` package), to check a report renders.

    png = screenshot("runs/demo/report.html", "runs/demo/report.png")   # None when no Chromium is installed

The flags are those that work on a closed network as root: no sandbox, no GPU, no background networking, a fresh
profile directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: str | Path, png_path: str | Path, *, width: int = 1200, height: int = 2400,
               timeout: float = 120.0) -> Path | None:
    """Screenshot of ``html_path`` at ``width`` x ``height`` into ``png_path``; None when Chromium is absent."""
    exe = find_chromium()
    if exe is None:
        return None
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png_path}", html_path.as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png_path.is_file():
        raise RuntimeError(f"chromium failed ({r.returncode}) rendering {html_path.name}: {r.stderr[-800:]}")
    return png_path
