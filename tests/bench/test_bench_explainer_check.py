"""The explainer rows' agreement check, with the allowance for ReLU gates tied within float32 rounding (the VGG-16
row): it still rejects real errors, and the allowance covers exactly the tied gates' terms."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jinterp.bench import explainer as E  # noqa: E402
from jinterp.bench import torch_explainer as T  # noqa: E402
from jinterp.methods.explainer import model as M  # noqa: E402

NAME, BATCH, IN_SHAPE, OUT_SHAPE, FILTERS = E.SHAPES_QUICK[0]


@pytest.fixture(scope="module")
def setup():
    model = M.Explainer(out_shape=OUT_SHAPE, filters=FILTERS)
    variables = M.init_explainer(model, jax.random.PRNGKey(0), IN_SHAPE)
    f, fp = E._inputs(BATCH, IN_SHAPE, OUT_SHAPE)
    state = variables
    grads = jax.jit(jax.grad(lambda p: M.make_loss(model)(p, {k: v for k, v in state.items() if k != "params"}, f,
                                                          fp, E.LAM, E.ETA, 1.0)[0]))(variables["params"])
    kw = dict(stride2=True, lam=E.LAM, eta=E.ETA, h=IN_SHAPE[0], w=IN_SHAPE[1])
    step = T.TorchStep(variables, lr=E.LR, **kw)
    step.inputs = tuple(torch.tensor(a).permute(0, 3, 1, 2).contiguous() for a in (f, fp))
    torch_grads = E._torch_kernel_grads(step)
    return variables, f, fp, kw, jax.tree.map(np.asarray, grads), torch_grads


def _scaled(grads, layer, factor):
    out = {n: dict(g) for n, g in grads.items()}
    out[layer]["kernel"] = grads[layer]["kernel"] * factor
    return out


def test_tied_gate_check_accepts_the_twins_and_rejects_a_flipped_or_scaled_gradient(setup):
    variables, f, fp, kw, grads, torch_grads = setup
    tied = T.tied_gate_allowance(variables, f, fp, **kw)
    allowance = {n: t["allowance"] for n, t in tied.items()}
    assert E._grad_diff(grads, torch_grads, allowance) <= 1e-4
    for layer in E.LAYERS:
        assert E._grad_diff(_scaled(grads, layer, -1.0), torch_grads, allowance) > 1e-2, layer
        assert E._grad_diff(_scaled(grads, layer, 1.01), torch_grads, allowance) > 1e-4, layer


def test_allowance_is_the_tied_gates_terms_only(setup):
    variables, f, fp, kw, grads, _ = setup
    none = T.tied_gate_allowance(variables, f, fp, margin=0.0, **kw)
    assert all(t["tied"] == 0 and not t["allowance"].any() for t in none.values())
    # every gate tied: the allowance bounds each whole entry (|Σ x·g| ≤ Σ |x|·|g|), and is tight for some
    every = T.tied_gate_allowance(variables, f, fp, margin=1e12, **kw)
    for n, t in every.items():
        g = np.abs(np.asarray(grads[n]["kernel"], np.float64))
        assert t["tied"] > 0 and np.all(t["allowance"] >= g - 1e-6 * g.max()), n
        assert t["allowance"].max() < 1e3 * g.max(), n
