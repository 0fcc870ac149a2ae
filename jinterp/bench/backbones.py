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
from jinterp.bench import harness
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
    return backbones.create(arch), variables, tm.to(harness.torch_device()), num_classes


def _nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(harness.torch_device())


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
        return float(np.max(np.abs(np.asarray(fwd(variables, xj)) - torch_fn().cpu().numpy())))

    return Case("backbone.forward", {"arch": arch, "batch": batch, "px": size}, lambda: fwd(variables, xj),
                torch_fn, check, atol=1e-3 if arch == "vgg16" else 2e-4, items=batch,
                jax_lowered=lambda: fwd.lower(variables, xj))


def train_step_case(arch: str, batch: int, size: int) -> Case:
    import torch

    model, variables, tm, num_classes = _pair(arch, size)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, batch)
    xj, yj, xt, yt = jnp.asarray(x), jnp.asarray(y), _nchw(x), torch.from_numpy(y).to(harness.torch_device())
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
            lt = t2.eval()(xt).cpu().numpy()
        return float(np.max(np.abs(lj - lt)))

    def lowered():
        s = fresh()
        s[2] = tx.init(s[0])
        return jax.jit(step).lower(*s, xj, yj)

    return Case("backbone.train_step", {"arch": arch, "batch": batch, "px": size, "opt": "sgd+momentum"},
                jax_fn, torch_fn, check, atol=2e-3, items=batch, jax_lowered=lowered)


# bf16 agreement, relative to the float32 output's largest entry (bf16 keeps 8 mantissa bits). Measured on the CPU,
# batch 16, worse side of the two: forward 2.0e-2 (ResNet-20), 2.3e-2 (ConvNet, JAX; PyTorch 1.3e-2); mixed-precision
# train step then eval logits 1.9e-2 (ResNet-20), 8.4e-2 (ConvNet, JAX: XLA:CPU's bf16 convolutions; PyTorch
# 2.3e-3). GPUs accumulate bf16 convolutions in float32, so the GPU rows should sit well inside these bounds.
BF16_RTOL = 5e-2
BF16_STEP_RTOL = 1e-1
BF16_NOTE = ("bf16: params, batch statistics and inputs cast to bfloat16 on both sides (JAX astype, PyTorch "
             ".to(torch.bfloat16)); agreement = max abs diff / max abs of the float32 JAX output, tolerance 5e-2")


def to_bf16(tree):
    """Every floating leaf of a JAX tree as bfloat16 (integer leaves, e.g. step counters, unchanged)."""
    return jax.tree.map(lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                        else a, tree)


def rel_diff(out, ref) -> float:
    """``max |out - ref| / max |ref|`` in float32 (the bf16 rows' agreement measure)."""
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def forward_bf16_case(arch: str, batch: int, size: int) -> Case:
    """The forward of :func:`forward_case` in bfloat16 on both sides, checked against the float32 JAX logits."""
    import copy

    import torch

    model, variables, tm, _ = _pair(arch, size)
    tm.eval()
    x = np.random.default_rng(1).standard_normal((batch, size, size, 3)).astype(np.float32)
    xj, xt = jnp.asarray(x), _nchw(x)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    vb, xjb = to_bf16(variables), xj.astype(jnp.bfloat16)
    tmb, xtb = copy.deepcopy(tm).to(torch.bfloat16), xt.to(torch.bfloat16)

    def torch_fn():
        with torch.no_grad():
            return tmb(xtb)

    def check():
        ref = np.asarray(fwd(variables, xj))
        return max(rel_diff(fwd(vb, xjb), ref), rel_diff(torch_fn().float().cpu().numpy(), ref))

    return Case("backbone.forward", {"arch": arch, "batch": batch, "px": size, "dtype": "bf16"},
                lambda: fwd(vb, xjb), torch_fn, check, atol=BF16_RTOL, items=batch, note=BF16_NOTE,
                jax_lowered=lambda: fwd.lower(vb, xjb))


def train_step_bf16_case(arch: str, batch: int, size: int) -> Case:
    """The train step of :func:`train_step_case` in mixed precision on both sides: float32 master weights, SGD
    update and BN running statistics; bfloat16 compute (JAX: params and inputs cast to bfloat16 inside the loss,
    logits back to float32 for the cross-entropy; PyTorch: ``torch.autocast(dtype=torch.bfloat16)``, which runs
    convolutions and linears in bf16 and the cross-entropy in float32). Agreement: eval-mode float32 logits of the
    stepped weights vs those of the float32 JAX step (relative)."""
    import copy

    import torch

    model, variables, tm, num_classes = _pair(arch, size)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, batch)
    xj, yj, xt = jnp.asarray(x), jnp.asarray(y), _nchw(x)
    yt = torch.from_numpy(y).to(harness.torch_device())
    tx = optax.sgd(LR, momentum=MOMENTUM)
    has_stats = "batch_stats" in variables

    def step(params, stats, opt, x, y, compute):
        def loss_fn(p):
            v = {"params": compute(p), **({"batch_stats": stats} if has_stats else {})}
            if has_stats:
                (logits, _), upd = model.apply(v, compute(x), train=True, mutable=["batch_stats"])
                stats_new = jax.tree.map(lambda new, old: new.astype(old.dtype), upd["batch_stats"], stats)
            else:
                logits, _ = model.apply(v, compute(x), train=True)
                stats_new = stats
            logits = logits.astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats_new

        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss

    jstep = jax.jit(step, donate_argnums=(0, 1, 2), static_argnums=(5,))

    def fresh():
        p = jax.tree.map(jnp.array, variables["params"])  # copies: donated below
        return [p, jax.tree.map(jnp.array, variables.get("batch_stats", {})), tx.init(p)]

    state = fresh()

    def jax_fn():
        p, s, o, loss = jstep(*state, xj, yj, to_bf16)
        state[:] = [p, s, o]
        return loss

    device_type = "cuda" if xt.is_cuda else "cpu"  # autocast knows these two
    tm_timed = copy.deepcopy(tm).train()
    topt = torch.optim.SGD(tm_timed.parameters(), LR, momentum=MOMENTUM)

    def torch_step(m, opt):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(xt), yt)
        loss.backward()
        opt.step()
        return loss

    def eval_logits(p, st):
        v = {"params": p, **({"batch_stats": st} if has_stats else {})}
        return np.asarray(model.apply(v, xj, train=False)[0])

    def check():
        p, st, _, _ = jstep(*fresh(), xj, yj, lambda t: t)
        ref = eval_logits(p, st)
        pb, stb, _, _ = jstep(*fresh(), xj, yj, to_bf16)
        t2 = copy.deepcopy(tm).train()
        torch_step(t2, torch.optim.SGD(t2.parameters(), LR, momentum=MOMENTUM))
        with torch.no_grad():
            lt = t2.eval()(xt).cpu().numpy()
        return max(rel_diff(eval_logits(pb, stb), ref), rel_diff(lt, ref))

    return Case("backbone.train_step", {"arch": arch, "batch": batch, "px": size, "opt": "sgd+momentum",
                                        "dtype": "bf16 (mixed)"},
                jax_fn, lambda: torch_step(tm_timed, topt), check, atol=BF16_STEP_RTOL, items=batch,
                note=("bf16 mixed precision: float32 weights/update/BN statistics, bfloat16 convolutions (JAX: params "
                      "+ inputs cast inside the loss; PyTorch: torch.autocast bf16); agreement = max abs diff / max "
                      f"abs of the float32 JAX step's eval logits, tolerance {BF16_STEP_RTOL:g}"),
                jax_lowered=lambda: jax.jit(step, static_argnums=(5,)).lower(*fresh(), xj, yj, to_bf16))


def cases(quick: bool, bf16: bool | None = None) -> list[Case]:
    """float32 parity rows; with ``bf16`` (default: on a GPU) each bf16 row right after its float32 row for the
    ResNet-20 and ConvNet forward and train step."""
    fw, st = (FORWARD_QUICK, STEP_QUICK) if quick else (FORWARD, STEP)
    bf16 = harness.on_gpu() if bf16 is None else bf16
    out = []
    for c in fw:
        out.append(forward_case(*c))
        if bf16 and c[0] != "vgg16":
            out.append(forward_bf16_case(*c))
    for c in st:
        out.append(train_step_case(*c))
        if bf16:
            out.append(train_step_bf16_case(*c))
    return out


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
