"""The non-overlapping max-pool fast path equals reduce_window (values and gradients), ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jinterp.nn import ops


def _reference(x, k, s, pads):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), *pads, (0, 0)))


@pytest.mark.parametrize("shape,k,ceil", [((2, 8, 8, 3), 2, False), ((2, 7, 9, 4), 2, False),
                                          ((2, 7, 9, 4), 2, True), ((1, 9, 9, 2), 3, False)])
@pytest.mark.parametrize("ties", [False, True])
def test_block_max_pool_matches_reduce_window(shape, k, ceil, ties):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:  # quantized values: many windows hold their maximum twice or more (e.g. zeros after a ReLU)
        x = np.maximum(np.round(x), 0.0)
    x = jnp.asarray(x)
    ho = [ops._pool_out(shape[1 + a], k, k, 0, ceil) for a in range(2)]
    pads = [(0, max((ho[a] - 1) * k + k - shape[1 + a], 0)) for a in range(2)]
    assert ops.fast_paths_enabled()
    fast = lambda x: ops.max_pool2d(x, k, k, ceil_mode=ceil)  # noqa: E731
    ref = lambda x: _reference(x, k, k, pads)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(jax.jit(fast)(x)), np.asarray(ref(x)))
    g = jnp.asarray(rng.standard_normal(ref(x).shape).astype(np.float32))
    gf = jax.jit(jax.grad(lambda x: jnp.sum(fast(x) * g)))(x)
    gr = jax.grad(lambda x: jnp.sum(ref(x) * g))(x)
    np.testing.assert_array_equal(np.asarray(gf), np.asarray(gr))


def test_block_max_pool_gradient_matches_torch_on_ties():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = 1.0  # two maxima in the first window: the first in row-major order wins
    gx = jax.grad(lambda x: ops.max_pool2d(x, 2, 2).sum())(jnp.asarray(x))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    torch.nn.functional.max_pool2d(xt, 2, 2).sum().backward()
    np.testing.assert_array_equal(np.asarray(gx), xt.grad.numpy().transpose(0, 2, 3, 1))
