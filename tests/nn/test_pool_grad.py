"""Pooling must be differentiable under jit (every backbone trains through it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.nn import ops


@pytest.mark.parametrize("pool", [
    lambda x: ops.max_pool2d(x, 3, 2, 1, ceil_mode=True),
    lambda x: ops.avg_pool2d(x, 2),
    lambda x: ops.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
])
def test_jitted_gradient_through_pooling_matches_eager(pool):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    f = lambda x: jnp.sum(pool(x) ** 2)
    g_jit = jax.jit(jax.grad(f))(x)
    with jax.disable_jit():
        g_eager = jax.grad(f)(x)
    np.testing.assert_allclose(g_jit, g_eager, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(g_jit).sum()) > 0
