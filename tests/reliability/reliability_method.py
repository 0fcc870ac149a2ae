"""A method command (``jinterp <method> ...``) as a real process, with every training step slowed down so that a
test can kill it mid-run.

    python tests/reliability/reliability_method.py --sleep S -- cladec --config tiny --workdir W ...

Wraps ``jinterp.core.loop.train_loop`` so that each ``train_step`` first sleeps ``S`` seconds (the numbers are
untouched), then runs ``jinterp.cli.main(argv)`` and exits with its status.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from any cwd


def _slow_train_loops(seconds: float) -> None:
    from jinterp.core import loop

    train_loop = loop.train_loop

    def slow_loop(state, *, train_step, **kw):
        def slow(s, b):
            time.sleep(seconds)
            return train_step(s, b)

        return train_loop(state, train_step=slow, **kw)

    loop.train_loop = slow_loop


def main(argv: list[str]) -> int:
    sleep = 0.0
    if argv[:1] == ["--sleep"]:
        sleep, argv = float(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if sleep > 0:
        _slow_train_loops(sleep)
    from jinterp import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
