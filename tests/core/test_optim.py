"""The one optimizer module (jinterp.core.optim) against torch.optim: SGD, Adam, AdamW, param groups, schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jinterp.core import optim

STEPS = 6


def _problem():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(STEPS)]
    return params, grads


def _run_jax(tx, params, grads, lrs=None):
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    update = jax.jit(lambda g, s, p, lr: tx.update(g, s, p, lr=lr) if lr is not None else tx.update(g, s, p))
    for i, g in enumerate(grads):
        u, state = update(jax.tree.map(jnp.asarray, g), state, p, None if lrs is None else lrs[i])
        p = optax.apply_updates(p, u)
    return {k: np.asarray(v) for k, v in p.items()}


def _run_torch(torch, make_opt, params, grads, lrs=None):
    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = make_opt(tp)
    for i, g in enumerate(grads):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[i][group["name"]]
        for k, v in g.items():
            tp[k].grad = torch.from_numpy(v.copy())
        opt.step()
    return {k: v.detach().numpy() for k, v in tp.items()}


CASES = {
    "sgd": (lambda: optim.torch_sgd(0.1),
            lambda t, p: t.optim.SGD(p.values(), lr=0.1, foreach=False)),
    "sgd_momentum_wd": (lambda: optim.torch_sgd(0.1, 0.9, 1e-2),
                        lambda t, p: t.optim.SGD(p.values(), lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=False)),
    "sgd_nesterov": (lambda: optim.torch_sgd(0.05, 0.9, 1e-3, nesterov=True),
                     lambda t, p: t.optim.SGD(p.values(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True,
                                              foreach=False)),
    "adam_wd": (lambda: optim.torch_adam(1e-2, 1e-2, 0.8, 0.99, 1e-6),
                lambda t, p: t.optim.Adam(p.values(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2,
                                          foreach=False)),
    "adamw": (lambda: optim.torch_adamw(1e-2, 0.1),
              lambda t, p: t.optim.AdamW(p.values(), lr=1e-2, weight_decay=0.1, foreach=False)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizers_match_torch(torch, name):
    params, grads = _problem()
    make_jax, make_torch = CASES[name]
    got = _run_jax(make_jax(), params, grads)
    want = _run_torch(torch, lambda p: make_torch(torch, p), params, grads)
    # Adam's float32 bias correction (1 - 0.999 is off by 1.3e-5 relative, see jinterp.core.optim) moves each
    # step by up to ~1e-5 of the lr (1e-2 here); SGD has no such term.
    atol = 1e-7 if name.startswith("sgd") else 1e-6
    for k in params:
        assert np.abs(got[k] - params[k]).max() > 1e-3  # the params moved
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=atol)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_decay_mask_and_per_param_lr_are_torch_param_groups(torch, kind):
    """decay_mask=kernels_only = a no-decay group for the bias; lr=pytree = a per-group lr changed every step."""
    params, grads = _problem()
    lrs = [{"w": 0.05 * (i + 1), "b": 0.01 / (i + 1)} for i in range(STEPS)]
    build = {"sgd": lambda: optim.torch_sgd(1.0, 0.9, 0.1, decay_mask=optim.kernels_only),
             "adam": lambda: optim.torch_adam(1.0, 0.1, decay_mask=optim.kernels_only),
             "adamw": lambda: optim.torch_adamw(1.0, 0.1, decay_mask=optim.kernels_only)}[kind]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    extra = {"momentum": 0.9} if kind == "sgd" else {}

    def make_torch(p):
        return cls([{"params": [p["w"]], "name": "w", "weight_decay": 0.1},
                    {"params": [p["b"]], "name": "b", "weight_decay": 0.0}], lr=1.0, foreach=False, **extra)

    got = _run_jax(build(), params, grads, [{k: jnp.float32(v) for k, v in lr.items()} for lr in lrs])
    want = _run_torch(torch, make_torch, params, grads, lrs)
    atol = 1e-7 if kind == "sgd" else 2e-5  # lrs up to 0.3 here; see test_optimizers_match_torch
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=atol)


def test_schedule_counts_this_optimizers_steps_and_scalar_lr_overrides_it():
    params, grads = _problem()
    sched = optim.piecewise_lr(0.1, [2, 4], 0.5)
    assert [float(sched(i)) for i in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    by_schedule = _run_jax(optim.torch_sgd(sched, 0.9), params, grads)
    by_override = _run_jax(optim.torch_sgd(123.0, 0.9), params, grads, [jnp.float32(sched(i)) for i in range(STEPS)])
    for k in params:
        np.testing.assert_array_equal(by_schedule[k], by_override[k])
    assert optim.multistep_lr(1.0, (4, 2), 0.5, 1) == 1.0
    assert optim.multistep_lr(1.0, (4, 2), 0.5, 2) == 0.5  # MultiStepLR counts a milestone once reached
    assert optim.multistep_lr(1.0, (4, 2), 0.5, 9) == 0.25


def test_lr_pytree_of_the_wrong_structure_is_refused():
    tx = optim.torch_sgd(0.1)
    p = {"w": jnp.ones(2), "b": jnp.ones(1)}
    with pytest.raises(ValueError, match="one lr per parameter"):
        tx.update(p, tx.init(p), p, lr={"w": 0.1})
