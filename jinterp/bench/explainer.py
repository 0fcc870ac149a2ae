"""Explainer network, JAX vs PyTorch: one explainer training step on fixed performer features.

    python -m jinterp.bench.explainer [--quick] [--repeats 7]

``explainer.train_step``: forward of both tracks (ICNN masks at the rounded centroid), RMS track norms, p,
decoder, loss = relative reconstruction error + λ·Σ exact ICNN filter loss (both interpretable layers) − η·log p,
backward, Adam, the β step (JAX: the body of :func:`jinterp.methods.explainer.model.make_update`, jitted; PyTorch:
``jinterp/bench/torch_explainer.py``, the same math in NCHW with autograd and ``torch.optim.Adam``). The
performer is frozen and its features are inputs here (its forward is the backbone benchmark's business).

Agreement: one step from the same weights on the same batch; max abs difference of the loss, the kernel
gradients (relative to their largest entry; jinterp's default scale-normalized filter loss on both sides), of the
updated β and of the updated parameters whose gradient is not negligible (|g| > 1e-4 in JAX: Adam's first step
is ``lr · sign(g)``, so near-zero gradients flip with rounding noise in either framework).

The VGG-16 row's gradients sit on ReLU kinks: a few pre-activations lie within float32 rounding of zero (one
``interp1`` gate is −1.2e-6 in float64 and +9e-8 in oneDNN's float32), so which side each lands on decides whether
its pixel's term enters the kernel gradient (3.1e-3 of the largest entry there). That row's check therefore
compares kernel gradients beyond what those tied gates can change, measured against a float64 evaluation
(:func:`jinterp.bench.torch_explainer.tied_gate_allowance`); the ConvNet row keeps the plain check.

Shapes: the synthparts ConvNet (relu3 16x16x64 -> relu4 8x8x64, 64 filters, batch 32) and a VGG-16-sized
relu5_2 -> relu5_3 pair (14x14x512 -> 14x14x512, 512 filters, batch 8; the spec's default explainer width).

``explainer.sweep_step`` (:func:`sweep_case`): six explainers (3 λ × 2 init seeds) trained at once on the ConvNet
shape: JAX's vmapped step vs a PyTorch loop of six steps and vs ``torch.func`` ensembling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.bench import harness
from jinterp.bench.harness import Case, main_for
from jinterp.core import train
from jinterp.core.xla_options import jit_reductions_outside_ynn
from jinterp.methods.explainer import model as M

# (name, batch, in (H, W, C), out (H, W, C), filters)
SHAPES = [("convnet relu3->relu4", 32, (16, 16, 64), (8, 8, 64), 64),
          ("vgg16 relu5_2->relu5_3", 8, (14, 14, 512), (14, 14, 512), 512)]
# Rows whose check allows for ReLU gates tied within float32 rounding (see _case): measured on the VGG-16 row only.
TIED_GATES = {"vgg16 relu5_2->relu5_3"}
SHAPES_QUICK = [("convnet relu3->relu4", 8, (16, 16, 32), (8, 8, 32), 16)]
LAM, ETA, LR = 1.0, 0.1, 1e-3


def _inputs(batch, in_shape, out_shape, seed=0):
    rng = np.random.default_rng(seed)
    f = np.maximum(rng.normal(size=(batch, *in_shape)), 0).astype(np.float32) * 2
    fp = np.maximum(rng.normal(size=(batch, *out_shape)), 0).astype(np.float32)
    return f, fp


def _case(name, batch, in_shape, out_shape, filters, tied_gates=False) -> Case:
    import torch

    from jinterp.bench import torch_explainer as T

    model = M.Explainer(out_shape=out_shape, filters=filters)
    variables = M.init_explainer(model, jax.random.PRNGKey(0), in_shape)
    tx = optax.adam(LR)
    update = jit_reductions_outside_ynn(M.make_update(M.make_loss(model), tx))  # as the explainer program
    f, fp = _inputs(batch, in_shape, out_shape)
    fj, fpj = jnp.asarray(f), jnp.asarray(fp)
    dev = harness.torch_device()
    ft, fpt = (torch.tensor(a, device=dev).permute(0, 3, 1, 2).contiguous() for a in (f, fp))
    stride2 = out_shape[0] < in_shape[0]
    lam, eta = jnp.float32(LAM), jnp.float32(ETA)

    def fresh_jax():
        return train.create_train_state(variables, tx, jax.random.PRNGKey(1))

    def fresh_torch():
        return T.TorchStep(variables, stride2=stride2, lam=LAM, eta=ETA, lr=LR, h=in_shape[0], w=in_shape[1],
                           device=dev)

    js = {"state": fresh_jax()}
    ts = {"step": fresh_torch()}

    def jax_fn():
        js["state"], m = update(js["state"], fj, fpj, lam, eta)
        return m["loss"]

    def torch_fn():
        return ts["step"](ft, fpt)

    def check():
        st0 = fresh_jax()
        grads = jax.grad(lambda p: M.make_loss(model)(p, st0.model_state, fj, fpj, lam, eta, 1.0)[0])(st0.params)
        st1, m = update(st0, fj, fpj, lam, eta)
        allowance, info = None, {}
        tg = _torch_kernel_grads(fresh_torch_with_inputs())
        if tied_gates:
            tied = T.tied_gate_allowance(variables, f, fp, stride2=stride2, lam=LAM, eta=ETA, h=in_shape[0],
                                         w=in_shape[1])
            allowance = {n: t["allowance"] for n, t in tied.items()}
            info = {"tied_gates": {n: t["tied"] for n, t in tied.items()},
                    "raw_grad_diff": _grad_diff(grads, tg)}
        # Gradients first, relative to their scale: the param check below sees only Adam's lr·sign(g), which hid
        # a halved max-term gradient in the loss's log-sum-exp.
        diffs = [_grad_diff(grads, tg, allowance)]
        tstep = fresh_torch()
        tloss = float(tstep(ft, fpt))
        diffs += [abs(float(m["loss"]) - tloss), _param_diff(st1.params, tstep.model.w, grads, allowance)]
        for i in (1, 2):
            diffs.append(float(np.max(np.abs(np.asarray(st1.model_state["icnn"][f"beta{i}"])
                                             - getattr(tstep.model, f"beta{i}").cpu().numpy()))))
        return {"max_abs_diff": max(diffs), **info} if tied_gates else max(diffs)

    def fresh_torch_with_inputs():
        step = fresh_torch()
        step.inputs = (ft, fpt)
        return step

    def lowered():
        return update.lower(fresh_jax(), fj, fpj, lam, eta)

    return Case(pipeline="explainer.train_step",
                params={"shape": name, "batch": batch, "filters": filters},
                jax_fn=jax_fn, torch_fn=torch_fn, check=check, atol=1e-4, jax_lowered=lowered, items=batch,
                note="performer features as inputs; loss, kernel gradients (relative), beta and non-negligible-"
                     "gradient params compared" + ("; kernel gradients beyond what ReLU gates tied within float32 "
                                                   "rounding can change (float64 reference)" if tied_gates else ""))


# K = 3 λ × 2 init seeds explainers (λ around the single-model row's 1.0; η as there).
SWEEP_LAMS, SWEEP_SEEDS = (0.5, 1.0, 2.0), 2
LAYERS = ("interp1", "interp2", "ordinary", "dec1", "dec_out")


def _torch_kernel_grads(step) -> dict:
    """One backward of a fresh :class:`~jinterp.bench.torch_explainer.TorchStep`: its kernel gradients, HWIO."""
    step.loss(*step.inputs)[0].backward()
    return {n: step.model.w[n + "_w"].grad.detach().cpu().numpy().transpose(2, 3, 1, 0) for n in LAYERS}


def _grad_diff(jax_grads: dict, torch_kernel_grads: dict, allowance: dict | None = None) -> float:
    """Max abs difference of each layer's kernel gradient, relative to the JAX gradient's largest entry; with
    ``allowance`` (``{layer: HWIO}``, :func:`~jinterp.bench.torch_explainer.tied_gate_allowance`), only the part
    of each entry's difference beyond what its ReLU gates tied within float32 rounding can make."""
    out = 0.0
    for n in LAYERS:
        jg = np.asarray(jax_grads[n]["kernel"], np.float64)
        diff = np.abs(jg - torch_kernel_grads[n])
        if allowance is not None:
            diff = np.maximum(diff - allowance[n], 0.0)
        out = max(out, float(np.max(diff)) / max(float(np.max(np.abs(jg))), 1e-12))
    return out


def _param_diff(jax_params: dict, torch_weights, grads: dict, allowance: dict | None = None) -> float:
    """Max abs difference of the updated parameters where the gradient is not negligible (|g| > 1e-4: Adam's
    first step is ``lr·sign(g)``, so near-zero gradients flip with rounding noise in either framework) and, with
    ``allowance``, larger than what tied ReLU gates can change (there the sign of g is not determined)."""
    out = 0.0
    for n in LAYERS:
        for suffix, key in (("_w", "kernel"), ("_b", "bias")):
            t = torch_weights[n + suffix].detach().cpu().numpy()
            if suffix == "_w":
                t = t.transpose(2, 3, 1, 0)
            g = np.abs(np.asarray(grads[n][key]))
            sel = g > 1e-4
            if allowance is not None and key == "kernel":
                sel &= g > allowance[n]
            if sel.any():
                out = max(out, float(np.max(np.abs(np.asarray(jax_params[n][key]) - t)[sel])))
    return out


def sweep_case(torch_way: str, *, quick: bool = False) -> Case:
    """K = 3 λ × 2 seeds explainers, one train step each, on the same performer features. JAX: the explainer's
    pure ``make_update`` vmapped over the stacked states and λ, η (as the program's λ/η sweep,
    ``program.make_step(num_models=K)``). PyTorch ``torch_way="loop"``: a Python loop over K
    :class:`~jinterp.bench.torch_explainer.TorchStep` (one optimizer each, the natural way); ``"torch.func"``:
    :class:`~jinterp.bench.torch_explainer.StackedExplainers` (stacked weights, ``vmap`` of the pure loss).

    Agreement (before timing), per model k: the vmapped JAX loss and kernel gradients equal model k's alone in
    PyTorch (gradients relative to their largest entry); the vmapped JAX step's loss, updated parameters
    (non-negligible gradients) and β equal the single-model JAX step's; the PyTorch way being timed gives model k
    the loss, updated parameters and β of its single-model PyTorch step."""
    import torch

    from jinterp.bench import torch_explainer as T

    name, batch, in_shape, out_shape, filters = (SHAPES_QUICK if quick else SHAPES)[0]
    model = M.Explainer(out_shape=out_shape, filters=filters)
    grid = [(seed, lam) for seed in range(SWEEP_SEEDS) for lam in SWEEP_LAMS]
    inits = [M.init_explainer(model, jax.random.PRNGKey(seed), in_shape) for seed in range(SWEEP_SEEDS)]
    tx = optax.adam(LR)
    loss_fn = M.make_loss(model)
    single = jit_reductions_outside_ynn(M.make_update(loss_fn, tx))
    update = jit_reductions_outside_ynn(jax.vmap(M.make_update(loss_fn, tx), in_axes=(0, None, None, 0, 0)))
    f, fp = _inputs(batch, in_shape, out_shape)
    fj, fpj = jnp.asarray(f), jnp.asarray(fp)
    lams = jnp.asarray([lam for _, lam in grid], jnp.float32)
    etas = jnp.full((len(grid),), ETA, jnp.float32)
    dev = harness.torch_device()
    ft, fpt = (torch.tensor(a, device=dev).permute(0, 3, 1, 2).contiguous() for a in (f, fp))
    stride2 = out_shape[0] < in_shape[0]

    def fresh_jax(k):
        return train.create_train_state(inits[grid[k][0]], tx, jax.random.PRNGKey(1))

    def fresh_stacked():
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[fresh_jax(k) for k in range(len(grid))])

    def fresh_torch(k):
        step = T.TorchStep(inits[grid[k][0]], stride2=stride2, lam=grid[k][1], eta=ETA, lr=LR, h=in_shape[0],
                           w=in_shape[1], device=dev)
        step.inputs = (ft, fpt)
        return step

    def fresh_torch_way():
        steps = [fresh_torch(k) for k in range(len(grid))]
        if torch_way == "loop":
            return lambda: T.loop_step(steps, ft, fpt), lambda k: (steps[k].model.w, steps[k].model.beta1,
                                                                     steps[k].model.beta2)
        if torch_way == "torch.func":
            ens = T.StackedExplainers(steps)
            return lambda: ens.step(ft, fpt), lambda k: ({n: v[k] for n, v in ens.w.items()}, ens.beta1[k],
                                                         ens.beta2[k])
        raise ValueError(f"torch_way must be 'loop' or 'torch.func', got {torch_way!r}")

    js = {"state": fresh_stacked()}
    torch_fn, _ = fresh_torch_way()

    def jax_fn():
        js["state"], m = update(js["state"], fj, fpj, lams, etas)
        return m["loss"]

    def check() -> float:
        st0 = fresh_stacked()
        grads = jax.jit(jax.vmap(jax.grad(lambda p, ms, lam, eta: loss_fn(p, ms, fj, fpj, lam, eta, 1.0)[0]),
                                 in_axes=(0, 0, 0, 0)))(st0.params, st0.model_state, lams, etas)
        st1, m = update(st0, fj, fpj, lams, etas)
        way_step, way_model = fresh_torch_way()
        way_losses = [float(v) for v in way_step()]
        diffs = []
        for k in range(len(grid)):
            gk = jax.tree.map(lambda a, k=k: a[k], grads)
            pk = jax.tree.map(lambda a, k=k: a[k], st1.params)
            diffs.append(_grad_diff(gk, _torch_kernel_grads(fresh_torch(k))))
            # the vmapped JAX step = the single-model JAX step
            s1, m1 = single(fresh_jax(k), fj, fpj, lams[k], etas[k])
            diffs.append(abs(float(m["loss"][k]) - float(m1["loss"])))
            for n in LAYERS:
                for key in ("kernel", "bias"):
                    sel = np.abs(np.asarray(gk[n][key])) > 1e-4
                    if sel.any():
                        diffs.append(float(np.max(np.abs(np.asarray(pk[n][key]) - np.asarray(s1.params[n][key]))[sel])))
            for i in (1, 2):
                diffs.append(float(np.max(np.abs(np.asarray(st1.model_state["icnn"][f"beta{i}"][k])
                                                 - np.asarray(s1.model_state["icnn"][f"beta{i}"])))))
            # the timed PyTorch way = model k's single PyTorch step, and that = JAX
            tstep = fresh_torch(k)
            tloss = float(tstep(ft, fpt))
            w_k, b1_k, b2_k = way_model(k)
            diffs += [abs(way_losses[k] - tloss), abs(float(m["loss"][k]) - tloss),
                      _param_diff(pk, w_k, gk), _param_diff(pk, tstep.model.w, gk)]
            for i, b in ((1, b1_k), (2, b2_k)):
                ref = np.asarray(st1.model_state["icnn"][f"beta{i}"][k])
                diffs += [float(np.max(np.abs(b.cpu().numpy() - ref))),
                          float(np.max(np.abs(getattr(tstep.model, f"beta{i}").cpu().numpy() - ref)))]
        return max(diffs)

    return Case(pipeline="explainer.sweep_step",
                params={"shape": name, "models": len(grid), "lams": "x".join(map(str, SWEEP_LAMS)),
                        "seeds": SWEEP_SEEDS, "batch": batch, "filters": filters, "torch": torch_way},
                jax_fn=jax_fn, torch_fn=torch_fn, check=check, atol=1e-4, items=batch * len(grid),
                jax_lowered=lambda: update.lower(fresh_stacked(), fj, fpj, lams, etas),
                note="K explainers in one jitted vmapped step vs PyTorch " +
                     ("Python loop over the K models" if torch_way == "loop" else "torch.func vmap of the pure loss"))


def cases(quick: bool) -> list[Case]:
    return [_case(*s, tied_gates=s[0] in TIED_GATES) for s in (SHAPES_QUICK if quick else SHAPES)] + [
        sweep_case(way, quick=quick) for way in ("loop", "torch.func")]


def main(argv=None):
    return main_for(cases, argv, "explainer")


if __name__ == "__main__":
    main()
