"""Tiny stand-ins for the core tests: a 2-layer Linen CNN, random data, a resumable batch iterator.

Also a small training script (``python tests/core/coretoy.py --workdir W --steps N``) that the kill-and-resume
test runs as a real subprocess; it writes the final params to ``W/final_params.npz``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from any cwd

from jinterp.core import loop, train  # noqa: E402
from jinterp.core.checkpoint import Checkpointer  # noqa: E402
from jinterp.core.config import OptimConfig  # noqa: E402

NUM_CLASSES = 3
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class TinyCNN(nn.Module):
    """conv(8) -> BN -> relu -> mean pool -> dense; returns ``(logits, feats)`` like the real backbones."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(8, (3, 3), name="conv1")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(h)
        h = nn.relu(h)
        h = nn.Dropout(0.1, deterministic=not train)(h)
        pooled = h.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(pooled), {"conv1": h, "pool": pooled}


def make_data(n: int = 64, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent brightness so the toy problem is learnable: uint8 images [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    base = (labels[:, None, None, None] * 80 + 20).astype(np.float32)
    images = np.clip(base + rng.normal(0, 30, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels


class ToyIterator:
    """Seeded, resumable batches: batch ``t`` depends only on (seed, t); the position is ``t``."""

    def __init__(self, images, labels, batch_size: int, seed: int = 0):
        self.images, self.labels, self.bs, self.seed, self.pos = images, labels, batch_size, seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        per_epoch = len(self.images) // self.bs
        epoch, i = divmod(self.pos, per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
        idx = perm[i * self.bs:(i + 1) * self.bs]
        self.pos += 1
        return {"image": self.images[idx], "label": self.labels[idx], "mask": np.ones(len(idx), bool)}

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        self.pos = int(state["pos"])


@functools.cache
def _compiled(optim: OptimConfig, steps: int, seed: int, mesh, compute_dtype):
    """Model, jitted init and jitted step, cached so that tests sharing a setup compile once."""
    model = TinyCNN()
    init_key, loop_key = jax.random.split(jax.random.PRNGKey(seed))
    dummy = jnp.zeros((1, 8, 8, 3))
    params_shape = jax.eval_shape(model.init, init_key, dummy)["params"]
    tx, schedule = train.make_optimizer(optim, steps, params_shape)
    # One jitted init: eager init would compile dozens of tiny programs (seconds on a 2-core CPU).
    init = jax.jit(lambda k: train.create_train_state(model.init(k, dummy, train=False), tx, loop_key))
    loss_fn = train.make_classifier_loss(model, mean=MEAN, std=STD, augment="flip")
    step = train.make_train_step(loss_fn, tx, mesh=mesh, schedule=schedule, compute_dtype=compute_dtype)
    return model, init, init_key, step


def setup(optim: OptimConfig | None = None, steps: int = 20, seed: int = 0, mesh=None,
          compute_dtype=None, batch_size: int = 16):
    """Model, a fresh initial state, the jitted step and a fresh iterator for a toy run."""
    optim = optim or OptimConfig(name="sgd", lr=0.05, weight_decay=1e-4, warmup_steps=2)
    model, init, init_key, step = _compiled(optim, steps, seed, mesh, compute_dtype)
    images, labels = make_data()
    return model, init(init_key), step, ToyIterator(images, labels, batch_size, seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step, to leave time for a kill")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    _, state, step, it = setup(steps=args.steps)
    ckpt = Checkpointer(workdir / "checkpoints", keep=3, config={"steps": args.steps})
    state, _, pos = loop.restore_or_init(ckpt, state, workdir)
    if pos is not None:
        it.set_state(pos)

    def slow_step(s, b):
        time.sleep(args.sleep)
        return step(s, b)

    state = loop.train_loop(state, train_step=slow_step, train_iter=it, num_steps=args.steps, workdir=workdir,
                            checkpointer=ckpt, log_every=5, ckpt_every=args.ckpt_every, progress=False)
    ckpt.close()
    flat = {train.path_name(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
    np.savez(workdir / "final_params.npz", **flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
