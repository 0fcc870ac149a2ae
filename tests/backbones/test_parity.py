"""Every backbone against a PyTorch reference: same random weights, every named intermediate and the logits.

Eval mode, float32, CPU; max abs error <= 1e-4 everywhere. Weights and BN statistics are random but keep the
activations O(1) (see ``torch_reference.randomize``), so the absolute tolerance means something. Inputs are
small; sizes are chosen so that the adaptive pools are exercised with uneven bins.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import

TOL = 1e-4

# (arch, (H, W, C)). VGG at 64 px: features end 2x2 -> adaptive 7x7 (overlapping bins); AlexNet at 160 px:
# 4x4 -> 6x6; torchvision ResNets at 64 px end 2x2; the CIFAR models at their native 32 px; ConvNet at 28 px
# (odd sizes through the pools). VGG/AlexNet use 256-wide hidden FCs here (the 4096-wide ones are 90% of
# their weights and only slow the test down); test_parity_vgg16_224 runs the real torchvision shapes.
SMALL_FC = {"hidden": 256}
CASES = [
    ("vgg16", (64, 64, 3)),
    ("vgg16_bn", (64, 64, 3)),
    ("alexnet", (160, 160, 3)),
    ("alexnet", (63, 63, 3)),
    ("resnet18", (64, 64, 3)),
    ("resnet50", (64, 64, 3)),
    ("resnet20", (32, 32, 3)),
    ("resnet32", (32, 32, 3)),
    ("resnet44", (32, 32, 3)),
    ("resnet56", (32, 32, 3)),
    ("vgg11_bn_cladec", (32, 32, 3)),
    ("vgg11_bn_cladec", (32, 32, 1)),
    ("convnet", (28, 28, 3)),
    ("convnet", (64, 64, 1)),
]


def _kwargs(arch: str, full: bool = False) -> dict:
    return SMALL_FC if arch in ("vgg16", "vgg16_bn", "alexnet") and not full else {}


@functools.cache
def _pair(tref, arch: str, image_shape: tuple, seed: int = 0, full: bool = False):
    """A randomized PyTorch reference and its converted Flax variables (cached for reuse)."""
    import torch

    h, w, c = image_shape
    kwargs = _kwargs(arch, full)
    num_classes = 10 if backbones.spec(arch).num_classes == 1000 and not full else None
    tm = tref.build(arch, num_classes or backbones.spec(arch).num_classes, in_channels=c, **kwargs)
    calib = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((8, c, h, w)).astype(np.float32))
    tref.randomize(tm, seed, calib)
    variables = torch_import.from_torch(arch, tm.state_dict(), image_shape=image_shape, **kwargs)
    return tm, backbones.create(arch, num_classes, **kwargs), variables


def _check(tref, arch, image_shape, batch=2, seed=0, full=False):
    import torch

    tm, model, variables = _pair(tref, arch, image_shape, seed, full)
    x = np.random.default_rng(seed + 2).standard_normal((batch, *image_shape)).astype(np.float32)
    names = backbones.layer_names(arch)
    # jit: one compile of the whole net is cheaper than eager mode's one compile per op.
    logits, feats = jax.jit(functools.partial(model.apply, train=False))(variables, jnp.asarray(x))
    ref_logits, ref_feats = tref.forward_with_features(tm, torch.from_numpy(x.transpose(0, 3, 1, 2)), names)

    assert set(feats) == set(names) == set(ref_feats)
    errors = {}
    for name in (*names, "logits"):
        got = np.asarray(logits if name == "logits" else feats[name])
        want = ref_logits if name == "logits" else ref_feats[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        errors[name] = (float(np.max(np.abs(got - want))), float(np.max(np.abs(want))))
    bad = {k: v for k, v in errors.items() if not v[0] <= TOL}
    worst = max(errors, key=lambda k: errors[k][0])
    assert not bad, f"{arch}: max abs error > {TOL} at {bad} (error, max |activation|)"
    # The activations are not degenerate: otherwise a small absolute error proves nothing.
    assert errors["logits"][1] > 1e-2 and errors[names[0]][1] > 1e-1, errors
    return errors[worst]


@pytest.mark.parametrize("arch,image_shape", CASES, ids=[f"{a}-{s[0]}px-c{s[2]}" for a, s in CASES])
def test_parity(tref, arch, image_shape):
    _check(tref, arch, image_shape)


def test_parity_vgg16_224(tref):
    """Real torchvision shapes (4096-wide FCs, 1000 classes) at the native 224 px (adaptive pool = identity)."""
    _check(tref, "vgg16", (224, 224, 3), batch=1, full=True)


def test_train_mode_matches_torch(tref):
    """Train-mode BN (batch statistics) and PyTorch's running-stat update (momentum 0.1, unbiased variance)."""
    import torch

    tm, model, variables = _pair(tref, "resnet20", (32, 32, 3))
    x = np.random.default_rng(5).standard_normal((4, 32, 32, 3)).astype(np.float32)
    (logits, _), updates = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    tm_train = tref.build("resnet20", 10)
    tm_train.load_state_dict(tm.state_dict())
    tm_train.train()
    with torch.no_grad():
        ref = tm_train(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    sd = tm_train.state_dict()
    bs = updates["batch_stats"]
    np.testing.assert_allclose(np.asarray(bs["layer2_0"]["bn1"]["mean"]), sd["layer2.0.bn1.running_mean"].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(bs["layer3_2"]["bn2"]["var"]), sd["layer3.2.bn2.running_var"].numpy(),
                               atol=1e-4, rtol=1e-5)
