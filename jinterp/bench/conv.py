"""Convolutions on CPU: JAX (``jinterp.nn.ops``) vs PyTorch, per shape and in two composite train steps.

Run: ``python -m jinterp.bench.conv [--quick] [--native] [--only SUBSTR] [--out PATH]``.

Per shape, forward and forward+backward (gradients w.r.t. input and kernel, with a fixed random cotangent) are
timed (f+b returns the forward output too, so XLA cannot drop the forward pass as dead code; before that fix
the JAX f+b columns timed the backward pass only). Transposed shapes also time both CPU formulations that
``ops.conv_transpose2d`` chooses between (oneDNN, GEMM + col2im). JAX and PyTorch calls alternate in one process
so that load from other processes on the shared CPU hits both alike; warm-up calls are excluded, JAX compile
time is reported separately, and medians are compared (ratio = JAX / PyTorch, < 1 means JAX is faster).
``--native`` adds a column for XLA's own convolution (``lax.conv_general_dilated``, the pre-optimization
formulation; for the train steps: compiled with ``JINTERP_FASTCONV=0``) under the same process flags.

PyTorch runs NCHW (its default layout, what PyTorch users run); JAX runs NHWC (jinterp's layout).
``OMP_WAIT_POLICY=PASSIVE`` is set (unless already set) before torch loads: on the shared 2-core machine, OpenMP
threads spinning at barriers made PyTorch 5-20x slower whenever any other process ran (ResNet-20 step: 0.2 s with
PASSIVE vs 1.6-4 s spinning), so the default would flatter JAX.
Writes a Markdown table to stdout and JSON to ``results/conv_cpu.json`` (:data:`jinterp.bench.harness.RESULTS`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jinterp.bench import harness
from jinterp.nn import _onednn, fastconv, ops  # importing jinterp sets its process-level XLA flags
from jinterp.nn.layers import BatchNorm2d, Conv2d, ConvTranspose2d, Linear

RESULTS = harness.RESULTS


@dataclass(frozen=True)
class Case:
    """One convolution: ``transposed`` uses PyTorch ConvTranspose2d semantics (kernel 4, stride 2, pad 1 ...)."""

    name: str
    n: int
    hw: int
    cin: int
    cout: int
    k: int
    stride: int
    padding: int
    transposed: bool = False
    group: str = ""


def cases(quick: bool) -> list[Case]:
    """The conv shapes jinterp's backbones, decoders and explainers run (batch 128 at 32 px, small at 224 px)."""
    b = 32 if quick else 128
    b224 = 2 if quick else 8
    out = [
        # CIFAR ResNet-20: 16/32/64 channels at 32/16/8 px, stride-2 downsampling, 1x1 projection shortcut.
        Case("r20 stem 3x3 3->16 @32", b, 32, 3, 16, 3, 1, 1, group="resnet20"),
        Case("r20 3x3 16->16 @32", b, 32, 16, 16, 3, 1, 1, group="resnet20"),
        Case("r20 3x3 s2 16->32 @32", b, 32, 16, 32, 3, 2, 1, group="resnet20"),
        Case("r20 1x1 s2 16->32 @32", b, 32, 16, 32, 1, 2, 0, group="resnet20"),
        Case("r20 3x3 32->32 @16", b, 16, 32, 32, 3, 1, 1, group="resnet20"),
        Case("r20 3x3 s2 32->64 @16", b, 16, 32, 64, 3, 2, 1, group="resnet20"),
        Case("r20 3x3 64->64 @8", b, 8, 64, 64, 3, 1, 1, group="resnet20"),
        # ClaDec's VGG-11-BN-style classifier at 32 px.
        Case("vgg11c 3x3 s2 1->32 @32", b, 32, 1, 32, 3, 2, 1, group="cladec-vgg"),
        Case("vgg11c 3x3 s2 32->64 @16", b, 16, 32, 64, 3, 2, 1, group="cladec-vgg"),
        Case("vgg11c 3x3 64->128 @8", b, 8, 64, 128, 3, 1, 1, group="cladec-vgg"),
        Case("vgg11c 3x3 128->256 @4", b, 4, 128, 256, 3, 1, 1, group="cladec-vgg"),
        Case("vgg11c 3x3 256->512 @2", b, 2, 256, 512, 3, 1, 1, group="cladec-vgg"),
        # ClaDec decoder: ConvTranspose2d(k=4, s=2, p=1) doubling the resolution.
        Case("dec T4x4 s2 512->512 @1", b, 1, 512, 512, 4, 2, 1, True, "cladec-dec"),
        Case("dec T4x4 s2 512->256 @2", b, 2, 512, 256, 4, 2, 1, True, "cladec-dec"),
        Case("dec T4x4 s2 256->128 @4", b, 4, 256, 128, 4, 2, 1, True, "cladec-dec"),
        Case("dec T4x4 s2 128->64 @8", b, 8, 128, 64, 4, 2, 1, True, "cladec-dec"),
        Case("dec T4x4 s2 64->3 @16", b, 16, 64, 3, 4, 2, 1, True, "cladec-dec"),
        Case("dec T4x4 s2 64->1 @16", b, 16, 64, 1, 4, 2, 1, True, "cladec-dec"),  # Fashion-MNIST output layer
        # ImageNet-size backbones at 224 px (VGG-16 layers, the ResNet 7x7/2 stem, a ResNet-50 1x1).
        Case("vgg16 3x3 3->64 @224", b224, 224, 3, 64, 3, 1, 1, group="imagenet"),
        Case("vgg16 3x3 64->64 @224", b224, 224, 64, 64, 3, 1, 1, group="imagenet"),
        Case("vgg16 3x3 256->256 @56", b224, 56, 256, 256, 3, 1, 1, group="imagenet"),
        Case("vgg16 3x3 512->512 @14", b224, 14, 512, 512, 3, 1, 1, group="imagenet"),
        Case("resnet 7x7 s2 3->64 @224", b224, 224, 3, 64, 7, 2, 3, group="imagenet"),
        Case("resnet50 1x1 256->64 @56", b224, 56, 256, 64, 1, 1, 0, group="imagenet"),
    ]
    return out


# ----------------------------------------------------------------------------------------------- timing


def _median_alternating(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each thunk, calling them round-robin ``reps`` times after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def _reps_for(flops: float, quick: bool) -> int:
    """Fewer repetitions for big shapes so that the whole run stays within minutes on 2 cores."""
    base = 5 if quick else 11
    if flops > 2e10:
        return max(3, base // 2)
    return base


# ------------------------------------------------------------------------------------------------- JAX


def _lax_conv(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _lax_conv_t(x, w, stride, padding):
    k = w.shape[0]
    q = k - 1 - padding
    return lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((q, q), (q, q)), lhs_dilation=(stride, stride),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _col2im_conv_t(x, w, stride, padding):
    return fastconv.conv_transpose2d_col2im(x, w, (stride, stride), (padding, padding), (0, 0))


def _onednn_conv_t(x, w, stride, padding):
    return _onednn.conv_transpose2d(x, w, (stride, stride), (padding, padding), (0, 0))


_TRANSPOSED = {"jinterp": ops.conv_transpose2d, "lax": _lax_conv_t, "col2im": _col2im_conv_t,
               "onednn": _onednn_conv_t}


def _jax_fns(case: Case, impl: str, x, w, g):
    """(forward, forward+backward) jitted thunks; ``impl`` is ``jinterp`` (ops) or ``lax`` (XLA native), and for
    transposed convs also ``col2im`` / ``onednn`` (the two CPU formulations ``ops`` chooses between)."""
    if case.transposed:
        conv = _TRANSPOSED[impl]
    else:
        conv = ops.conv2d if impl == "jinterp" else _lax_conv

    def fwd(x, w):
        return conv(x, w, case.stride, case.padding)

    def fwd_bwd(x, w, g):
        y, vjp = jax.vjp(fwd, x, w)
        return y, *vjp(g)  # y returned: otherwise XLA drops the forward pass as dead code (PyTorch runs it)

    f = jax.jit(fwd)
    fb = jax.jit(fwd_bwd)
    t0 = time.perf_counter()
    f_c = f.lower(x, w).compile()
    t1 = time.perf_counter()
    fb_c = fb.lower(x, w, g).compile()
    t2 = time.perf_counter()
    return ((lambda: jax.block_until_ready(f_c(x, w))), (lambda: jax.block_until_ready(fb_c(x, w, g))),
            t1 - t0, t2 - t1)


def _out_hw(case: Case) -> int:
    if case.transposed:
        return (case.hw - 1) * case.stride - 2 * case.padding + case.k
    return (case.hw + 2 * case.padding - case.k) // case.stride + 1


def _flops(case: Case) -> float:
    """Forward multiply-adds x2 (for the transposed conv: counted on its input grid)."""
    if case.transposed:
        return 2.0 * case.n * case.hw * case.hw * case.cin * case.cout * case.k * case.k
    o = _out_hw(case)
    return 2.0 * case.n * o * o * case.cin * case.cout * case.k * case.k


# ----------------------------------------------------------------------------------------------- torch


def _torch_fns(case: Case, xn: np.ndarray, wn: np.ndarray, gn: np.ndarray):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(xn.transpose(0, 3, 1, 2)))
    g = torch.from_numpy(np.ascontiguousarray(gn.transpose(0, 3, 1, 2)))
    if case.transposed:
        w = torch.from_numpy(np.ascontiguousarray(wn.transpose(2, 3, 0, 1)))  # (in, out, kh, kw)
        conv = lambda a, b: F.conv_transpose2d(a, b, stride=case.stride, padding=case.padding)
    else:
        w = torch.from_numpy(np.ascontiguousarray(wn.transpose(3, 2, 0, 1)))  # (out, in, kh, kw)
        conv = lambda a, b: F.conv2d(a, b, stride=case.stride, padding=case.padding)
    xr = x.clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return conv(x, w)

    def fwd_bwd():
        return torch.autograd.grad(conv(xr, wr), (xr, wr), g)

    return fwd, fwd_bwd


# ------------------------------------------------------------------------------------------------- run


def bench_case(case: Case, quick: bool, native: bool) -> dict:
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((case.n, case.hw, case.hw, case.cin), np.float32)
    wn = (rng.standard_normal((case.k, case.k, case.cin, case.cout), np.float32)
          / np.sqrt(case.k * case.k * case.cin)).astype(np.float32)
    o = _out_hw(case)
    gn = rng.standard_normal((case.n, o, o, case.cout), np.float32)
    x, w, g = jnp.asarray(xn), jnp.asarray(wn), jnp.asarray(gn)
    impls = ["jinterp"] + (["lax"] if native else [])
    if case.transposed and _onednn.available():
        impls += ["col2im", "onednn"]  # both candidates of ops.conv_transpose2d, timed in the same rounds
    fwd_fns, fb_fns, compile_s = {}, {}, {}
    for impl in impls:
        f, fb, cf, cfb = _jax_fns(case, impl, x, w, g)
        fwd_fns[impl], fb_fns[impl] = f, fb
        compile_s[impl] = cf + cfb
    tf, tfb = _torch_fns(case, xn, wn, gn)
    fwd_fns["torch"], fb_fns["torch"] = tf, tfb
    reps = _reps_for(_flops(case), quick)
    t_fwd = _median_alternating(fwd_fns, reps, warmup=2)
    t_fb = _median_alternating(fb_fns, reps, warmup=2)
    return {
        "case": asdict(case), "out_hw": o, "gflop_fwd": _flops(case) / 1e9, "reps": reps,
        "fwd_s": t_fwd, "fwd_bwd_s": t_fb, "compile_s": compile_s,
        "ratio_fwd": t_fwd["jinterp"] / t_fwd["torch"], "ratio_fwd_bwd": t_fb["jinterp"] / t_fb["torch"],
    }


# ------------------------------------------------------------------------------------- composite steps


class ClaDecDecoder(nn.Module):
    """ClaDec's decoder: Linear 512->512 + ReLU, then ConvTranspose2d(4, 2, 1) 512->512->256->128->64->3
    (1 -> 32 px) with ReLUs and a final sigmoid."""

    chans: tuple[int, ...] = (512, 256, 128, 64, 3)

    @nn.compact
    def __call__(self, z):
        h = jax.nn.relu(Linear(512)(z)).reshape(z.shape[0], 1, 1, 512)
        for i, c in enumerate((512, *self.chans)):
            if i == 0:
                continue
            h = ConvTranspose2d(c, 4, 2, 1)(h)
            h = jax.nn.relu(h) if i < len(self.chans) else jax.nn.sigmoid(h)
        return h


class _Block(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        y = Conv2d(self.features, 3, self.stride, 1, use_bias=False)(x)
        y = jax.nn.relu(BatchNorm2d()(y, train))
        y = BatchNorm2d()(Conv2d(self.features, 3, 1, 1, use_bias=False)(y), train)
        if self.stride != 1 or x.shape[-1] != self.features:  # option A: subsample, zero-pad channels
            pad = self.features // 4
            x = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return jax.nn.relu(x + y)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016: 3 stages x 3 basic blocks, 16/32/64 ch, option-A shortcuts); used only
    when ``jinterp.backbones.create("resnet20")`` is unavailable. Returns ``(logits, {})`` like the registry."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(BatchNorm2d()(Conv2d(16, 3, 1, 1, use_bias=False)(x), train))
        for stage, f in enumerate((16, 32, 64)):
            for b in range(3):
                x = _Block(f, 2 if (stage > 0 and b == 0) else 1)(x, train)
        return Linear(self.num_classes)(jnp.mean(x, axis=(1, 2))), {}


def _resnet20_module() -> tuple[nn.Module, str]:
    try:
        from jinterp.backbones import registry
    except ImportError:
        return ResNet20(), "bench-local"
    return registry.create("resnet20", num_classes=10), "jinterp.backbones"


def _torch_resnet20(num_classes: int = 10):
    import torch.nn as tnn
    import torch.nn.functional as F

    class Block(tnn.Module):
        def __init__(self, cin, f, s):
            super().__init__()
            self.c1, self.b1 = tnn.Conv2d(cin, f, 3, s, 1, bias=False), tnn.BatchNorm2d(f)
            self.c2, self.b2 = tnn.Conv2d(f, f, 3, 1, 1, bias=False), tnn.BatchNorm2d(f)
            self.pad = f // 4 if (s != 1 or cin != f) else None

        def forward(self, x):
            y = self.b2(self.c2(self.b1(self.c1(x)).relu()))
            if self.pad is not None:  # option A, as akamaster/pytorch_resnet_cifar10
                x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
            return (x + y).relu()

    layers, cin = [tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
    for stage, f in enumerate((16, 32, 64)):
        for b in range(3):
            layers.append(Block(cin, f, 2 if (stage > 0 and b == 0) else 1))
            cin = f
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, num_classes)]
    return tnn.Sequential(*layers)


def _torch_cladec_decoder():
    import torch.nn as tnn

    layers = [tnn.Linear(512, 512), tnn.ReLU(), tnn.Unflatten(1, (512, 1, 1))]
    chans = (512, 512, 256, 128, 64, 3)
    for i in range(1, len(chans)):
        layers.append(tnn.ConvTranspose2d(chans[i - 1], chans[i], 4, 2, 1))
        layers.append(tnn.ReLU() if i < len(chans) - 1 else tnn.Sigmoid())
    return tnn.Sequential(*layers)


class _fastconv_env:
    """Context: ``JINTERP_FASTCONV`` set to ``value`` while tracing (ops read it at trace time)."""

    def __init__(self, fast: bool):
        self.value = "1" if fast else "0"

    def __enter__(self):
        self.old = os.environ.get("JINTERP_FASTCONV")
        os.environ["JINTERP_FASTCONV"] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("JINTERP_FASTCONV", None)
        else:
            os.environ["JINTERP_FASTCONV"] = self.old


def _cladec_step(batch: int, fast: bool = True):
    """(jax thunk, torch thunk, compile s): one Adam step of the decoder on an MSE reconstruction loss."""
    import torch

    rng = np.random.default_rng(0)
    zn = rng.standard_normal((batch, 512), np.float32)
    tn = rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32)
    model = ClaDecDecoder()
    params = model.init(jax.random.key(0), jnp.asarray(zn))["params"]
    tx = optax.adam(1e-3)
    state = [params, tx.init(params)]
    z, t = jnp.asarray(zn), jnp.asarray(tn)

    @jax.jit
    def step(params, opt, z, t):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply({"params": p}, z) - t) ** 2))(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    t0 = time.perf_counter()
    with _fastconv_env(fast):
        compiled = step.lower(state[0], state[1], z, t).compile()
    compile_s = time.perf_counter() - t0

    def jax_step():
        p, o, loss = compiled(state[0], state[1], z, t)
        state[0], state[1] = p, o
        jax.block_until_ready(loss)

    tm = _torch_cladec_decoder()
    topt = torch.optim.Adam(tm.parameters(), 1e-3)
    tz, tt = torch.from_numpy(zn), torch.from_numpy(np.ascontiguousarray(tn.transpose(0, 3, 1, 2)))

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.mean((tm(tz) - tt) ** 2)
        loss.backward()
        topt.step()

    return jax_step, torch_step, compile_s


def _resnet20_step(batch: int, fast: bool = True):
    """(jax thunk, torch thunk, compile s): one SGD-momentum step of CIFAR ResNet-20 (BN in train mode);
    the JAX model is ``jinterp.backbones.create("resnet20")`` where present, PyTorch runs its akamaster twin."""
    import torch

    rng = np.random.default_rng(0)
    xn = rng.standard_normal((batch, 32, 32, 3), np.float32)
    yn = rng.integers(0, 10, batch)
    model, _ = _resnet20_module()
    variables = model.init(jax.random.key(0), jnp.asarray(xn))
    tx = optax.sgd(0.1, momentum=0.9)
    state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]
    x, y = jnp.asarray(xn), jnp.asarray(yn)

    @jax.jit
    def step(params, stats, opt, x, y):
        def loss_fn(p):
            (logits, _), upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                           mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss

    t0 = time.perf_counter()
    with _fastconv_env(fast):
        compiled = step.lower(*state, x, y).compile()
    compile_s = time.perf_counter() - t0

    def jax_step():
        p, s, o, loss = compiled(*state, x, y)
        state[:] = [p, s, o]
        jax.block_until_ready(loss)

    tm = _torch_resnet20().train()
    topt = torch.optim.SGD(tm.parameters(), 0.1, momentum=0.9)
    tx_, ty = torch.from_numpy(np.ascontiguousarray(xn.transpose(0, 3, 1, 2))), torch.from_numpy(yn)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(tx_), ty)
        loss.backward()
        topt.step()

    return jax_step, torch_step, compile_s


def run_steps(quick: bool, only: str = "", native: bool = False) -> list[dict]:
    """Time the composite train steps (JAX and PyTorch alternating, medians); ``native`` adds the step compiled
    with ``JINTERP_FASTCONV=0`` (XLA's convolutions everywhere)."""
    batch = 32 if quick else 128
    reps = 3 if quick else 7
    out = []
    for name, make in (("ClaDec decoder step (Adam)", _cladec_step), ("ResNet-20 step (SGD)", _resnet20_step)):
        if only and only not in name:
            continue
        jf, tf, comp = make(batch)
        fns = {"jax": jf, "torch": tf}
        if native:
            fns["lax"] = make(batch, fast=False)[0]
        t = _median_alternating(fns, reps, warmup=2)
        out.append({"name": name, "batch": batch, "jax_s": t["jax"], "torch_s": t["torch"],
                    "lax_s": t.get("lax"), "ratio": t["jax"] / t["torch"], "compile_s": comp})
        print(f"{name:28s} ratio {t['jax'] / t['torch']:5.2f}  (jax {t['jax'] * 1e3:.0f} ms, "
              f"torch {t['torch'] * 1e3:.0f} ms)", flush=True)
    return out


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def markdown(rows: list[dict], steps: list[dict], native: bool) -> str:
    head = "| shape | N | fwd JAX ms | fwd torch ms | fwd ratio | f+b JAX ms | f+b torch ms | f+b ratio |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if native:
        head += " f+b lax ms |"
        sep += "---:|"
    head += " compile s |"
    sep += "---:|"
    lines = [head, sep]
    for r in rows:
        c, f, fb = r["case"], r["fwd_s"], r["fwd_bwd_s"]
        line = (f"| {c['name']} | {c['n']} | {_fmt_ms(f['jinterp'])} | {_fmt_ms(f['torch'])} | "
                f"{r['ratio_fwd']:.2f} | {_fmt_ms(fb['jinterp'])} | {_fmt_ms(fb['torch'])} | "
                f"**{r['ratio_fwd_bwd']:.2f}** |")
        if native:
            line += f" {_fmt_ms(fb['lax'])} |"
        line += f" {r['compile_s']['jinterp']:.2f} |"
        lines.append(line)
    both = [r for r in rows if "onednn" in r["fwd_bwd_s"]]
    if both:  # the two transposed-conv formulations ops.conv_transpose2d chooses between, per shape
        lines += ["", "| transposed shape | N | f+b oneDNN ms | f+b col2im ms | f+b torch ms | oneDNN / torch | "
                  "col2im / torch | fwd oneDNN / col2im / torch ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in both:
            c, f, fb = r["case"], r["fwd_s"], r["fwd_bwd_s"]
            lines.append(f"| {c['name']} | {c['n']} | {_fmt_ms(fb['onednn'])} | {_fmt_ms(fb['col2im'])} | "
                         f"{_fmt_ms(fb['torch'])} | **{fb['onednn'] / fb['torch']:.2f}** | "
                         f"{fb['col2im'] / fb['torch']:.2f} | {_fmt_ms(f['onednn'])} / {_fmt_ms(f['col2im'])} / "
                         f"{_fmt_ms(f['torch'])} |")
    if steps:
        lines += ["", "| train step | batch | JAX ms | torch ms | ratio | lax ms | compile s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s in steps:
            lax_ms = _fmt_ms(s["lax_s"]) if s.get("lax_s") else "-"
            lines.append(f"| {s['name']} | {s['batch']} | {_fmt_ms(s['jax_s'])} | {_fmt_ms(s['torch_s'])} | "
                         f"**{s['ratio']:.2f}** | {lax_ms} | {s['compile_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 32 (2 at 224 px), fewer repetitions")
    p.add_argument("--native", action="store_true", help="also time XLA's native conv (lax) for comparison")
    p.add_argument("--only", default="", help="run only shapes/steps whose name contains this substring")
    p.add_argument("--no-steps", action="store_true", help="skip the composite train steps")
    p.add_argument("--out", default=str(RESULTS / "conv_cpu.json"))
    a = p.parse_args(argv)

    import torch

    rows = []
    for case in cases(a.quick):
        if a.only and a.only not in case.name:
            continue
        r = bench_case(case, a.quick, a.native)
        rows.append(r)
        print(f"{case.name:28s} fwd {r['ratio_fwd']:5.2f}  f+b {r['ratio_fwd_bwd']:5.2f}  "
              f"(jax {r['fwd_bwd_s']['jinterp'] * 1e3:.1f} ms, torch {r['fwd_bwd_s']['torch'] * 1e3:.1f} ms)",
              flush=True)
    steps = [] if a.no_steps else run_steps(a.quick, a.only, a.native)
    table = markdown(rows, steps, a.native)
    print()
    print(table)
    meta = {
        "jax": jax.__version__, "torch": torch.__version__, "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "machine": platform.processor() or platform.machine(), "quick": a.quick,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "shapes": rows, "steps": steps, "markdown": table}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
