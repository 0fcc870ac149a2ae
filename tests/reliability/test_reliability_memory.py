"""Bounded host memory: streamed feature extraction and dissection over 10x more data cost (almost) no more RSS.

``reliability_memory.py`` runs in a fresh process per measurement and reports ``ru_maxrss`` (peak RSS) after a
warm-up (imports, compilation, one chunk) and at the end. Layer ``relu1`` of a slim convnet on 64 px synthparts
holds A = 256 KiB of float32 activations per image; N = 256 images (1x) against 10 N = 2560 (10x). Holding the
activations would add 9 N A = 576 MiB to the 10x run's peak. (The allocator settles within the first ~700
images, about 40 MiB above the warm-up peak and flat after that; a smaller 1x run would measure that settling,
not growth with the data.) The bound asserted, per mode:

* ``iter_features`` streamed chunk by chunk: peak(10x) - peak(1x) < 10 % of 9 N A;
* ``extract(cache_dir=...)`` (peak when the cache is written): < 15 % of 9 N A plus twice the extra uint8 input
  (the images are one array by the API's design, 12 KiB each, copied once while concatenating);
* dissection (exact top-0.5 % thresholds over the stream, then the tally): < 20 % of 9 N A. Exact quantiles keep a
  running top-k per unit, k = 0.005 N h w, so their state (and XLA's top-k workspace) does grow with N, by design.

Measured on the 2-core development machine under load (KiB, peak(1x) -> peak(10x)): see the issue note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().with_name("reliability_memory.py")
N = 256
ACT = 64 * 64 * 16 * 4        # relu1 bytes per image (the script reports it too)
IMG = 64 * 64 * 3             # uint8 input bytes per image
BOUND = {"iter": 0.10, "cache": 0.15, "dissect": 0.20}


def _measure(mode: str, n: int, tmp: Path) -> dict:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(SCRIPT), "--mode", mode, "--n", str(n), "--cache", str(tmp / f"c{n}")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["activation_bytes_per_image"] == ACT
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["iter", "cache", "dissect"])
def test_peak_rss_does_not_grow_with_the_streamed_data(tmp_path, mode):
    small, large = _measure(mode, N, tmp_path), _measure(mode, 10 * N, tmp_path)
    key = "maxrss_after_extract_kib" if mode == "cache" else "maxrss_end_kib"
    growth = (large[key] - small[key]) * 1024
    held = 9 * N * ACT
    allowed = BOUND[mode] * held + (2 * 9 * N * IMG if mode == "cache" else 0)
    report = (f"{mode}: peak RSS {small[key]} KiB (N={N}) -> {large[key]} KiB (N={10 * N}); growth "
              f"{growth / 2**20:.1f} MiB vs {held / 2**20:.0f} MiB if the activations were held "
              f"({100 * growth / held:.1f} %, bound {allowed / 2**20:.1f} MiB)")
    print(report)
    assert growth < allowed, report
