"""Runs one jinterp command three times in one process (seed A, seed A again, seed B) into three work dirs.

    python tests/reliability/reliability_determinism.py --root DIR --seeds 0,0,1 -- cladec --config tiny --set ...

Run ``k`` goes to ``DIR/run<k>`` with ``--set seed=<seed k>`` appended. One process for the three runs pays
the imports once and lets later runs reuse what the first compiled; every run still builds its own data,
models and keys from the config, so equal outputs mean the program is a function of its config and seed.
Exits with the first non-zero status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from any cwd


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--seeds", default="0,0,1")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]
    from jinterp import cli

    for k, seed in enumerate(args.seeds.split(",")):
        code = cli.main([*command, "--workdir", str(Path(args.root) / f"run{k}"), "--set", f"seed={seed}"])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
