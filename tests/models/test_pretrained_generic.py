"""The real akamaster ResNet-20 (../shared), written as its own PyTorch code (option-A shortcuts through a
lambda with F.pad and slicing, F.avg_pool2d by the width), converted generically: PyTorch's accuracy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jinterp import backbones, models
from jinterp.models import weights

REFERENCE = Path(__file__).resolve().parents[1] / "backbones" / "torch_reference.py"


def _reference_module():
    name = "jinterp_tests_models_torch_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REFERENCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_generic_conversion_of_the_real_resnet20(shared_dir, torch):
    path = shared_dir / "weights/resnet20-12fca82f.th"
    if not path.is_file():
        pytest.skip(f"pretrained weights not available: {path} is absent")
    net = _reference_module().build("resnet20", 10)
    net.load_state_dict({k: torch.tensor(v) for k, v in weights.read_state_dict(path).items()}, strict=False)
    net.eval()
    with np.load(shared_dir / "data/cifar10_subset.npz") as d:
        x, y = d["test_x"], d["test_y"].astype(np.int64)
    xn = np.asarray(backbones.normalize(x, "resnet20"))
    model, variables = models.from_torch(net, xn[:2].transpose(0, 3, 1, 2))
    assert {"layer1", "layer2.0.shortcut", "layer3.2.bn2", "avgpool", "linear"} <= set(
        jax.eval_shape(lambda v: model.apply(v, xn[:1]), variables)[1])

    predict = jax.jit(lambda v, im: model.apply(v, im, train=False)[0])
    logits = np.concatenate([np.asarray(predict(variables, part)) for part in np.split(xn, 2)])
    with torch.no_grad():
        want = net(torch.from_numpy(xn[:64].transpose(0, 3, 1, 2).copy())).numpy()
    assert np.max(np.abs(logits[:64] - want)) <= 1e-4
    acc = float((logits.argmax(-1) == y).mean())
    print(f"ResNet-20 converted by jinterp.models.from_torch: accuracy {acc:.4f} on {len(y)} CIFAR-10 images")
    assert acc >= 0.91


def test_converted_resnet20_compiles_to_the_builtin_program(torch):
    """Speed by construction: the generic conversion of ResNet-20 lowers to the same XLA program as the hand-written
    backbone (same op counts, no layout transposes), so it runs at the built-in's speed."""
    import collections
    import re

    import jax.numpy as jnp

    net = _reference_module().build("resnet20", 10).eval()
    converted, cvars = models.from_torch(net, np.zeros((1, 3, 32, 32), np.float32))
    builtin = backbones.create("resnet20")
    bvars = backbones.init(builtin, jax.random.key(0))
    x = jnp.zeros((2, 32, 32, 3))

    def op_counts(model, variables):
        text = jax.jit(lambda v, im: model.apply(v, im, train=False)[0]).lower(variables, x).compile().as_text()
        counts = collections.Counter(re.findall(r"= \S+ ([\w-]+)\(", text))
        # On the CPU a convolution may be a oneDNN custom call (jinterp.nn._onednn) instead of XLA's op.
        counts["convolution"] += text.count('custom_call_target="jinterp_onednn_conv_fwd"')
        return counts

    got, want = op_counts(converted, cvars), op_counts(builtin, bvars)
    assert got["transpose"] == 0 and got["convolution"] == want["convolution"] == 19
    assert sum(got.values()) == sum(want.values()), (got, want)
