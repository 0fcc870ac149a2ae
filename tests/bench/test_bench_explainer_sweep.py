"""The six-explainer vmapped row compares like with like: each vmapped JAX model takes the step it takes alone
(in JAX and in PyTorch), and both PyTorch ways of timing it (a loop, ``torch.func`` ensembling) take that step."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from jinterp.bench import explainer  # noqa: E402


@pytest.mark.slow  # six explainers compiled single, vmapped and for gradients: 60-90 s per way on 2 loaded cores
@pytest.mark.parametrize("way", ["loop", "torch.func"])
def test_sweep_case_agrees_model_by_model(way):
    case = explainer.sweep_case(way, quick=True)
    assert case.params["models"] == 6
    diff = case.check()
    assert np.isfinite(diff) and diff <= case.atol, diff
    jax_losses = np.asarray(case.jax_fn())
    torch_losses = np.asarray([float(v) for v in case.torch_fn()])
    assert jax_losses.shape == (6,) and len(set(np.round(jax_losses, 5))) == 6     # six distinct models
    np.testing.assert_allclose(torch_losses, jax_losses, rtol=1e-5)


@pytest.mark.parametrize("way", ["loop", "torch.func"])
def test_sweep_case_keeps_every_torch_tensor_on_the_chosen_device(monkeypatch, way):
    """With ``torch_device()`` answering "meta", the timed PyTorch work runs on meta tensors: a model, β, λ or
    constant left on the CPU would raise a device mismatch (on a GPU: a mismatch or a silent host computation)."""
    import torch

    from jinterp.bench import harness

    monkeypatch.setattr(harness, "torch_device", lambda: "meta")
    losses = explainer.sweep_case(way, quick=True).torch_fn()
    losses = torch.stack(list(losses)) if isinstance(losses, list) else losses
    assert losses.device.type == "meta" and losses.shape == (6,)
