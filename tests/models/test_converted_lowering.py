"""Speed by construction: a PyTorch ResNet-20 converted with ``jinterp.models.from_torch`` lowers to the same
operations as jinterp's hand-written ResNet-20 (issue #18 item 6: the converted model at the built-in's speed).

Timing on a shared CPU is too noisy for a test, so the guard is structural: the eval forward and the train-mode
loss gradient of both models trace to the same multiset of primitives with the same output shapes, nested
jaxprs (the fast conv's custom VJP, inner jits) included. An extra layout transpose, a conv that misses
:mod:`jinterp.nn`'s fast path or a batch norm computed differently changes the multiset. Complements
``test_pretrained_generic.py``'s compiled-forward op counts: this checks before XLA's simplifier (which can cancel
a transpose pair) and covers the backward pass of the train step too.
"""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp import backbones, models
from jinterp.backbones import torch_import
from jinterp.bench.harness import load_by_path

REFERENCE = Path(__file__).resolve().parents[1] / "backbones" / "torch_reference.py"
SIZE, BATCH = 8, 2  # 8 px: every stage still has a 3x3 conv on >= 2x2 px; shapes only matter for tracing


def _primitives(jaxpr, counts=None) -> collections.Counter:
    """``(primitive, output shapes)`` of every equation, recursing into sub-jaxprs (custom_vjp, jit, ...)."""
    counts = collections.Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        counts[(eqn.primitive.name, tuple(str(v.aval) for v in eqn.outvars))] += 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _primitives(inner, counts)
    return counts


def _models(torch):
    ref = load_by_path(REFERENCE, "jinterp_tests_models_torch_reference")
    tm = ref.build("resnet20", 10).eval()
    builtin_vars = torch_import.from_torch("resnet20", tm.state_dict(), image_shape=(SIZE, SIZE, 3))
    converted, converted_vars = models.from_torch(tm, np.zeros((1, 3, SIZE, SIZE), np.float32))
    return (backbones.create("resnet20"), builtin_vars), (converted, converted_vars)


def _forward_ops(model, variables, x):
    return _primitives(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False)[0])(variables, x).jaxpr)


def _train_grad_ops(model, variables, x, y):
    def loss(params, stats):
        (logits, _), upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                       mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

    grad = jax.value_and_grad(loss, has_aux=True)
    return _primitives(jax.make_jaxpr(grad)(variables["params"], variables["batch_stats"]).jaxpr)


def _difference(a: collections.Counter, b: collections.Counter) -> dict:
    return {"only built-in": dict(a - b), "only converted": dict(b - a)}


def test_converted_resnet20_forward_lowers_like_the_builtin(torch):
    (bm, bv), (cm, cv) = _models(torch)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((BATCH, SIZE, SIZE, 3)), jnp.float32)
    builtin, converted = _forward_ops(bm, bv, x), _forward_ops(cm, cv, x)
    assert sum(builtin.values()) > 50  # the walk sees the network, not an empty trace
    assert converted == builtin, _difference(builtin, converted)


def test_converted_resnet20_train_gradient_lowers_like_the_builtin(torch):
    (bm, bv), (cm, cv) = _models(torch)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((BATCH, SIZE, SIZE, 3)), jnp.float32)
    y = jnp.asarray([1, 3])
    builtin, converted = _train_grad_ops(bm, bv, x, y), _train_grad_ops(cm, cv, x, y)
    # forward and backward convolutions: XLA's, or oneDNN's FFI calls where jinterp.nn._onednn is built
    assert sum(n for (p, _), n in builtin.items() if p in ("conv_general_dilated", "ffi_call")) > 19
    assert converted == builtin, _difference(builtin, converted)
