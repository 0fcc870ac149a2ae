"""The rows where JAX's structure should pay compare like with like.

* N models at once: the JAX vmapped ClaDec sweep step (3 α × 2 seeds = 6 decoders) gives every model the loss and
  gradients it gets trained alone in PyTorch, and both PyTorch ways of timing it (a loop over the models,
  ``torch.func`` ensembling) take the same step.
* The graph's EM iteration at conv5_3's shape, streamed in several chunks: same updated nodes.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from jinterp.bench import cladec, graph  # noqa: E402


@pytest.mark.slow  # six decoders compiled twice (JAX, torch.func): 40-150 s on 2 loaded cores
def test_sweep_case_agrees_and_both_torch_ways_take_the_same_step():
    loop = cladec.sweep_case("flat", 4, 4, torch_way="loop")
    assert loop.params["models"] == 6
    diff = loop.check()
    assert np.isfinite(diff) and diff <= loop.atol, diff
    ens = cladec.sweep_case("flat", 4, 4, torch_way="torch.func")
    loop_losses, ens_losses = np.asarray(loop.torch_fn()), np.asarray(ens.torch_fn())
    assert loop_losses.shape == (6,) and len(set(np.round(loop_losses, 6))) == 6   # six distinct models
    np.testing.assert_allclose(ens_losses, loop_losses, rtol=1e-5)
    np.testing.assert_allclose(float(loop.jax_fn()), loop_losses.mean(), rtol=1e-5)


def test_graph_em_iteration_over_several_chunks_agrees():
    case = graph.em_iteration_case("vgg16 conv5_3", 14, 512, 0.1, 3, memory_mb=1)
    assert case.params["chunk"] < case.params["images"]          # the streamed path, not one chunk
    diff = case.check()
    assert np.isfinite(diff) and diff <= case.atol, diff
