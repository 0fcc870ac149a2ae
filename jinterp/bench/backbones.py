"""Backbones, JAX vs PyTorch: forward pass (eval mode) and one SGD-momentum training step (BN in train mode).

    python -m jinterp.bench.backbones [--quick] [--repeats 7]

The same random weights (a PyTorch reference module randomized with realistic BN statistics, converted with
:func:`jinterp.backbones.torch_import.from_torch`) and the same batch go through both frameworks in float32.
Agreement: the forward compares logits; the train step compares the logits (eval mode) of the two models after
one step from the same start, which checks loss, gradients, BN statistics and the update together.
The PyTorch modules are the ones the parity tests use (``tests/backbones/torch_reference.py``), so the benchmark
and the tests cannot disagree about what the reference is.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.bench.harness import Case, load_by_path, main_for

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "backbones" / "torch_reference.py"

# (arch, batch, image size)
FORWARD = [("resnet20", 256, 32), ("vgg16", 16, 224), ("convnet", 256, 64)]
FORWARD_QUICK = [("resnet20", 32, 32), ("convnet", 32, 64)]
STEP = [("resnet20", 128, 32), ("convnet", 128, 64)]
STEP_QUICK = [("resnet20", 16, 32), ("convnet", 16, 64)]
LR, MOMENTUM = 0.05, 0.9


def _reference():
    return load_by_path(REFERENCE, "jinterp_bench_torch_reference")


def _pair(arch: str, size: int, seed: int = 0):
    """(flax model, variables, torch module) with identical weights."""
    import torch

    tref = _reference()
    num_classes = backbones.spec(arch).num_classes
    tm = tref.build(arch, num_classes)
    calib = torch.from_numpy(np.random.default_rng(seed).standard_normal((8, 3, size, size)).astype(np.float32))
    tref.randomize(tm, seed, calib)
    variables = torch_import.from_torch(arch, tm.state_dict(), image_shape=(size, size, 3))
    return backbones.create(arch), variables, tm, num_classes


def _nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def forward_case(arch: str, batch: int, size: int) -> Case:
    import torch

    model, variables, tm, _ = _pair(arch, size)
    tm.eval()
    x = np.random.default_rng(1).standard_normal((batch, size, size, 3)).astype(np.float32)
    xj, xt = jnp.asarray(x), _nchw(x)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])

    def torch_fn():
        with torch.no_grad():
            return tm(xt)

    def check():
        return float(np.max(np.abs(np.asarray(fwd(variables, xj)) - torch_fn().numpy())))

    return Case("backbone.forward", {"arch": arch, "batch": batch, "px": size}, lambda: fwd(variables, xj),
                torch_fn, check, atol=1e-3 if arch == "vgg16" else 2e-4, items=batch,
                jax_lowered=lambda: fwd.lower(variables, xj))


def train_step_case(arch: str, batch: int, size: int) -> Case:
    import torch

    model, variables, tm, num_classes = _pair(arch, size)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, batch)
    xj, yj, xt, yt = jnp.asarray(x), jnp.asarray(y), _nchw(x), torch.from_numpy(y)
    tx = optax.sgd(LR, momentum=MOMENTUM)
    has_stats = "batch_stats" in variables

    def step(params, stats, opt, x, y):
        def loss_fn(p):
            v = {"params": p, **({"batch_stats": stats} if has_stats else {})}
            if has_stats:
                (logits, _), upd = model.apply(v, x, train=True, mutable=["batch_stats"])
                stats_new = upd["batch_stats"]
            else:
                logits, _ = model.apply(v, x, train=True)
                stats_new = stats
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats_new

        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss

    jstep = jax.jit(step, donate_argnums=(0, 1, 2))
    fresh = lambda: [jax.tree.map(jnp.array, variables["params"]),  # noqa: E731  (copies: donated below)
                     jax.tree.map(jnp.array, variables.get("batch_stats", {})), None]
    state = fresh()
    state[2] = tx.init(state[0])

    def jax_fn():
        p, s, o, loss = jstep(*state, xj, yj)
        state[:] = [p, s, o]
        return loss

    import copy

    tm_timed = copy.deepcopy(tm).train()
    topt = torch.optim.SGD(tm_timed.parameters(), LR, momentum=MOMENTUM)

    def torch_fn():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm_timed(xt), yt)
        loss.backward()
        topt.step()
        return loss

    def check():
        s = fresh()
        s[2] = tx.init(s[0])
        p, st, _, _ = jstep(*s, xj, yj)
        v = {"params": p, **({"batch_stats": st} if has_stats else {})}
        lj = np.asarray(model.apply(v, xj, train=False)[0])
        t2 = copy.deepcopy(tm).train()
        o2 = torch.optim.SGD(t2.parameters(), LR, momentum=MOMENTUM)
        torch.nn.functional.cross_entropy(t2(xt), yt).backward()
        o2.step()
        with torch.no_grad():
            lt = t2.eval()(xt).numpy()
        return float(np.max(np.abs(lj - lt)))

    def lowered():
        s = fresh()
        s[2] = tx.init(s[0])
        return jax.jit(step).lower(*s, xj, yj)

    return Case("backbone.train_step", {"arch": arch, "batch": batch, "px": size, "opt": "sgd+momentum"},
                jax_fn, torch_fn, check, atol=2e-3, items=batch, jax_lowered=lowered)


def cases(quick: bool) -> list[Case]:
    fw, st = (FORWARD_QUICK, STEP_QUICK) if quick else (FORWARD, STEP)
    return [forward_case(*c) for c in fw] + [train_step_case(*c) for c in st]


def scaling_cases(quick: bool) -> list[Case]:
    """ResNet-20 forward vs batch size and convnet forward vs input size."""
    batches = (8, 32) if quick else (8, 32, 128, 512)
    sizes = (32, 64) if quick else (32, 64, 128, 224)
    return ([forward_case("resnet20", b, 32) for b in batches]
            + [forward_case("convnet", 8 if quick else 32, s) for s in sizes])


def main(argv=None):
    return main_for(cases, argv, "backbones")


if __name__ == "__main__":
    main()
