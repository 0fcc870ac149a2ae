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

Shapes: the synthparts ConvNet (relu3 16x16x64 -> relu4 8x8x64, 64 filters, batch 32) and a VGG-16-sized
relu5_2 -> relu5_3 pair (14x14x512 -> 14x14x512, 512 filters, batch 8; the spec's default explainer width).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.bench import harness
from jinterp.bench.harness import Case, main_for
from jinterp.core import train
from jinterp.methods.explainer import model as M

# (name, batch, in (H, W, C), out (H, W, C), filters)
SHAPES = [("convnet relu3->relu4", 32, (16, 16, 64), (8, 8, 64), 64),
          ("vgg16 relu5_2->relu5_3", 8, (14, 14, 512), (14, 14, 512), 512)]
SHAPES_QUICK = [("convnet relu3->relu4", 8, (16, 16, 32), (8, 8, 32), 16)]
LAM, ETA, LR = 1.0, 0.1, 1e-3


def _inputs(batch, in_shape, out_shape, seed=0):
    rng = np.random.default_rng(seed)
    f = np.maximum(rng.normal(size=(batch, *in_shape)), 0).astype(np.float32) * 2
    fp = np.maximum(rng.normal(size=(batch, *out_shape)), 0).astype(np.float32)
    return f, fp


def _case(name, batch, in_shape, out_shape, filters) -> Case:
    import torch

    from jinterp.bench import torch_explainer as T

    model = M.Explainer(out_shape=out_shape, filters=filters)
    variables = M.init_explainer(model, jax.random.PRNGKey(0), in_shape)
    tx = optax.adam(LR)
    update = jax.jit(M.make_update(M.make_loss(model), tx))
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

    def check() -> float:
        st0 = fresh_jax()
        grads = jax.grad(lambda p: M.make_loss(model)(p, st0.model_state, fj, fpj, lam, eta, 1.0)[0])(st0.params)
        st1, m = update(st0, fj, fpj, lam, eta)
        diffs = []
        # Gradients first, relative to their scale: the param check below sees only Adam's lr·sign(g), which hid
        # a halved max-term gradient in the loss's log-sum-exp.
        gstep = fresh_torch()
        gstep.loss(ft, fpt)[0].backward()
        for lname in ("interp1", "interp2", "ordinary", "dec1", "dec_out"):
            tg = gstep.model.w[lname + "_w"].grad.detach().cpu().numpy().transpose(2, 3, 1, 0)
            jg = np.asarray(grads[lname]["kernel"])
            diffs.append(float(np.max(np.abs(jg - tg)) / max(float(np.max(np.abs(jg))), 1e-12)))
        tstep = fresh_torch()
        tloss = float(tstep(ft, fpt))
        diffs.append(abs(float(m["loss"]) - tloss))
        tw = tstep.model.w
        for lname in ("interp1", "interp2", "ordinary", "dec1", "dec_out"):
            for suffix, key in (("_w", "kernel"), ("_b", "bias")):
                t = tw[lname + suffix].detach().cpu().numpy()
                if suffix == "_w":
                    t = t.transpose(2, 3, 1, 0)
                j = np.asarray(st1.params[lname][key])
                g = np.abs(np.asarray(grads[lname][key]))
                sel = g > 1e-4
                if sel.any():
                    diffs.append(float(np.max(np.abs(j - t)[sel])))
        for i in (1, 2):
            diffs.append(float(np.max(np.abs(np.asarray(st1.model_state["icnn"][f"beta{i}"])
                                             - getattr(tstep.model, f"beta{i}").cpu().numpy()))))
        return max(diffs)

    def lowered():
        return update.lower(fresh_jax(), fj, fpj, lam, eta)

    return Case(pipeline="explainer.train_step",
                params={"shape": name, "batch": batch, "filters": filters},
                jax_fn=jax_fn, torch_fn=torch_fn, check=check, atol=1e-4, jax_lowered=lowered, items=batch,
                note="performer features as inputs; loss, kernel gradients (relative), beta and non-negligible-"
                     "gradient params compared")


def cases(quick: bool) -> list[Case]:
    return [_case(*s) for s in (SHAPES_QUICK if quick else SHAPES)]


def main(argv=None):
    return main_for(cases, argv, "explainer")


if __name__ == "__main__":
    main()
