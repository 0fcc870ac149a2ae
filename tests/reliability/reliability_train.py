"""``jinterp train-backbone`` on a tiny synthparts as a real process, with fault-injection hooks for the tests.

    python tests/reliability/reliability_train.py --workdir W [--sleep S] [--block-rename STEP[/ITEM]]

Runs ``jinterp.cli.main(["train-backbone", ...])`` with :data:`ARGS` (a slim convnet, 12 steps, a checkpoint every
4 steps) and exits with its status. ``--sleep`` slows every training step so that a test can kill the process
mid-run. ``--block-rename 8`` stalls Orbax's final rename of checkpoint step 8 (everything of step 8 is written
into ``8.orbax-checkpoint-tmp``, the rename to ``8`` never happens), and ``--block-rename 8/state`` stalls the
rename of the ``state`` item inside it; either way ``W/.blocked`` appears when the stall begins, so that a test
can SIGKILL the process in the middle of writing a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from any cwd

DATA = "synthparts:size=32,n_train=96,n_test=32"
ARGS = ["--config", "tiny", "--quiet", "--data", DATA, "--set", "steps=12", "--set", "batch_size=16",
        "--set", "widths=4,8,8,8", "--set", "eval_every=0", "--set", "ckpt_every=4", "--set", "log_every=2",
        "--set", "keep=3", "--set", "optim.warmup_steps=2", "--set", "augment=flip_crop"]


def _slow_steps(seconds: float) -> None:
    from jinterp.core import train

    make = train.make_train_step

    def make_slow(*a, **kw):
        step = make(*a, **kw)

        def slow(state, batch):
            time.sleep(seconds)
            return step(state, batch)

        return slow

    train.make_train_step = make_slow


def _block_rename(spec: str, marker: Path) -> None:
    import asyncio

    from orbax.checkpoint._src.path import atomicity

    step, _, item = spec.partition("/")
    rename = atomicity.async_path.rename

    async def stalled(src, dst, *a, **kw):
        src, dst = Path(str(src)), Path(str(dst))
        hit = (dst.name == step and not item) or (item and dst.name == item
                                                  and dst.parent.name.startswith(f"{step}.orbax-checkpoint-tmp"))
        if hit:
            marker.write_text(f"{src} -> {dst}\n")
            await asyncio.sleep(3600)
        return await rename(src, dst, *a, **kw)

    atomicity.async_path.rename = stalled


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--block-rename", default="")
    args, extra = p.parse_known_args(argv)
    if args.sleep:
        _slow_steps(args.sleep)
    if args.block_rename:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        _block_rename(args.block_rename, Path(args.workdir) / ".blocked")
    from jinterp import cli

    return cli.main(["train-backbone", "--workdir", args.workdir, *ARGS, *extra])


if __name__ == "__main__":
    sys.exit(main())
