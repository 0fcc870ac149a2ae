"""The real akamaster ResNet-20 from ../shared, converted, classifies CIFAR-10 like it does in PyTorch."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import

WEIGHTS = "weights/resnet20-12fca82f.th"


@pytest.fixture(scope="module")
def resnet20(shared_dir, torch):
    path = shared_dir / WEIGHTS
    if not path.is_file():
        pytest.skip(f"pretrained weights not available: {path} is absent")
    return backbones.create("resnet20"), torch_import.from_torch("resnet20", path)


def test_resnet20_cifar10_accuracy(resnet20, shared_dir):
    model, variables = resnet20
    with np.load(shared_dir / "data/cifar10_subset.npz") as d:
        x, y = d["test_x"], d["test_y"].astype(np.int64)
    assert x.shape == (846, 32, 32, 3) and x.dtype == np.uint8

    @jax.jit
    def predict(v, images):
        logits, _ = model.apply(v, backbones.normalize(images, "resnet20"))
        return logits.argmax(-1)

    # Two equal halves: one compile, and peak memory stays small on the shared CPU.
    preds = np.concatenate([np.asarray(predict(variables, part)) for part in np.split(x, 2)])
    acc = float((preds == y).mean())
    print(f"ResNet-20 (converted) accuracy on {len(y)} CIFAR-10 test images: {acc:.4f}")
    # PyTorch with the same file gets 0.917 (shared/data/README.md); float32 round-off may flip a tie or two.
    assert acc >= 0.91


def test_resnet20_file_keys_match_name_map(shared_dir, torch):
    path = shared_dir / WEIGHTS
    if not path.is_file():
        pytest.skip(f"pretrained weights not available: {path} is absent")
    sd = torch_import.load_state_dict(path)
    assert set(sd) == set(torch_import.name_map("resnet20"))
