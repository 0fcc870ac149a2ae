"""`python -m experiments.bench [--quick]` (what `make bench` runs): every benchmark in this folder, in turn.

Full size by default, writing `results/<name>_cpu.json`; `--quick` runs CI-sized versions and writes under
`results/tmp/` so the committed full-size figures are not overwritten. The one shared harness with scaling curves
is the Benchmarks issue's work; until then each script times JAX vs PyTorch alternately on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.bench import backbones, conv, synthparts

TMP = Path(__file__).parent / "results" / "tmp"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    if quick:
        TMP.mkdir(parents=True, exist_ok=True)
        synthparts.main(["--n", "512", "--repeats", "2", "--sizes", "64", "--presets", "default",
                         "--out", str(TMP / "synthparts_cpu.json")])
        backbones.main(["--quick", "--out", str(TMP / "backbones_cpu.json")])
        conv.main(["--quick", "--no-steps", "--only", "r20", "--out", str(TMP / "conv_cpu.json")])
    else:
        synthparts.main([])
        backbones.main([])
        conv.main(["--native"])


if __name__ == "__main__":
    main()
