"""load_model: a built-in arch with any weights file, a saved converted model, FILE.py:FACTORY for PyTorch and
Flax; layer names validated with the nearest match."""

from __future__ import annotations

import textwrap

import jax
import numpy as np
import pytest
from flax import traverse_util

from jinterp import backbones, models
from jinterp.backbones import torch_import
from jinterp.errors import ConfigError, LayerError, MissingFileError, ModelError, ShapeError, WeightsError

TORCH_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    def build(num_classes=3):
        torch.manual_seed(0)
        return Net(num_classes)
""")

LINEN_FILE = textwrap.dedent("""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(2, name="fc")(x.mean((1, 2)))

    def build():
        return Net()
""")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JINTERP_CACHE_DIR", str(tmp_path / "cache"))


def test_torch_factory_with_checkpoint(tmp_path, torch):
    (tmp_path / "net.py").write_text(TORCH_FILE)
    spec = f"{tmp_path / 'net.py'}:build"
    model0, vars0, info0 = models.load_model(spec, image_shape=(12, 12, 3))
    assert info0.kind == "torch" and info0.num_classes == 3 and info0.image_shape == (12, 12, 3)
    assert info0.layer_names[:4] == ("body.0", "body.1", "body.2", "body.3") and "head" in info0.layer_names

    # a trained checkpoint (other weights than the factory's seed) is loaded into the module before conversion
    torch.manual_seed(5)
    ns: dict = {}
    exec(TORCH_FILE, ns)
    net = ns["Net"](3).eval()
    net.body[1].running_mean.fill_(0.3)
    ckpt = tmp_path / "net.pth"
    torch.save({"state_dict": net.state_dict()}, ckpt)
    model, variables, info = models.load_model(spec, weights=ckpt, image_shape=(12, 12, 3))
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(model.apply(variables, x)[0], want, atol=1e-5)
    assert models.check_layers(info, ["body.2", "head"]) == ("body.2", "head")
    with pytest.raises(LayerError) as e:
        models.check_layers(info, "body.20")
    assert "Did you mean 'body.2'" in str(e.value) and "body.0" in str(e.value)

    # a checkpoint of another model: one line, the keys and the fix
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(3, 8)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError) as e:
        models.load_model(spec, weights=tmp_path / "other.pth", image_shape=(12, 12, 3))
    msg = str(e.value)
    assert "\n" not in msg and "missing keys (" in msg and "unexpected keys (1): conv.weight" in msg
    torch.save(ns["Net"](2).state_dict(), tmp_path / "two.pth")
    with pytest.raises(WeightsError, match=r"head.weight \(2, 8\) \(expected \(3, 8\)\)"):
        models.load_model(spec, weights=tmp_path / "two.pth", image_shape=(12, 12, 3))
    # a converted model saved to one file loads back through load_model
    saved = models.save_model(tmp_path / "net.npz", model, variables, {"image_shape": [12, 12, 3]})
    m2, v2, info2 = models.load_model(str(saved))
    assert info2.kind == "saved" and info2.layer_names == info.layer_names
    np.testing.assert_allclose(m2.apply(v2, x)[0], want, atol=1e-5)


def test_factory_errors(tmp_path, torch):
    (tmp_path / "net.py").write_text(TORCH_FILE)
    with pytest.raises(ModelError, match="no function 'biuld'. Did you mean 'build'"):
        models.load_model(f"{tmp_path / 'net.py'}:biuld", image_shape=(8, 8, 3))
    with pytest.raises(ShapeError, match="image_shape"):
        models.load_model(f"{tmp_path / 'net.py'}:build")
    with pytest.raises(MissingFileError):
        models.load_model(f"{tmp_path / 'absent.py'}:build", image_shape=(8, 8, 3))
    (tmp_path / "bad.py").write_text("def build():\n    return 42\n")
    with pytest.raises(ModelError, match="returned a int"):
        models.load_model(f"{tmp_path / 'bad.py'}:build", image_shape=(8, 8, 3))
    with pytest.raises(ConfigError, match="did you mean 'resnet20'"):
        models.load_model("resnt20")
    with pytest.raises(ShapeError, match="expects 3 input channels, got 1"):
        models.load_model(f"{tmp_path / 'net.py'}:build", image_shape=(8, 8, 1))


def test_linen_factory_with_npz_weights(tmp_path):
    (tmp_path / "lin.py").write_text(LINEN_FILE)
    spec = f"{tmp_path / 'lin.py'}:build"
    model, variables, info = models.load_model(spec, image_shape=(8, 8, 3))
    assert info.kind == "linen" and info.num_classes == 2 and set(info.layer_names) == {"conv", "fc"}
    flat = {"/".join(k): np.asarray(v) + 1.0 for k, v in traverse_util.flatten_dict(variables).items()}
    np.savez(tmp_path / "lin.npz", **flat)
    _, loaded, _ = models.load_model(spec, weights=tmp_path / "lin.npz", image_shape=(8, 8, 3))
    np.testing.assert_allclose(loaded["params"]["fc"]["bias"], variables["params"]["fc"]["bias"] + 1.0)
    del flat["params/fc/bias"]
    np.savez(tmp_path / "short.npz", **flat)
    with pytest.raises(WeightsError, match=r"missing keys \(1\): params/fc/bias"):
        models.load_model(spec, weights=tmp_path / "short.npz", image_shape=(8, 8, 3))
    with pytest.raises(WeightsError, match=r"params/conv/kernel \(3, 3, 3, 4\) \(expected \(3, 3, 1, 4\)\)"):
        models.load_model(spec, weights=tmp_path / "lin.npz", image_shape=(8, 8, 1))


def test_builtin_arch_with_pytorch_weights(tmp_path, torch):
    variables = backbones.init(backbones.create("resnet20"), jax.random.key(0))
    sd = torch_import.to_state_dict("resnet20", variables)
    torch.save({f"module.{k}": torch.tensor(v) for k, v in sd.items()}, tmp_path / "r20.th")
    model, loaded, info = models.load_model("resnet20", weights=tmp_path / "r20.th")
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    assert info.kind == "builtin" and info.normalization == "cifar" and info.num_classes == 10
    assert info.layer_names == backbones.layer_names("resnet20")


def test_torch_factory_safetensors_weights_equal_the_pth(tmp_path, torch):
    """``--model FILE.py:FACTORY --weights x.safetensors`` gives exactly the variables of the same ``.pth``."""
    st_torch = pytest.importorskip("safetensors.torch")
    (tmp_path / "net.py").write_text(TORCH_FILE)
    spec = f"{tmp_path / 'net.py'}:build"
    ns: dict = {}
    exec(TORCH_FILE, ns)
    torch.manual_seed(7)
    net = ns["Net"](3).eval()
    net.body[1].running_var.fill_(2.0)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    st_torch.save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    _, want, _ = models.load_model(spec, weights=tmp_path / "net.pth", image_shape=(12, 12, 3))
    _, got, _ = models.load_model(spec, weights=tmp_path / "net.safetensors", image_shape=(12, 12, 3))
    _, factory, _ = models.load_model(spec, image_shape=(12, 12, 3))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert not np.array_equal(got["params"]["head"]["kernel"], factory["params"]["head"]["kernel"])
    wrong = dict(net.state_dict())
    wrong["head.weight"] = torch.zeros(4, 8)
    st_torch.save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(WeightsError, match=r"shape mismatches \(1\): head.weight") as e:
        models.load_model(spec, weights=tmp_path / "wrong.safetensors", image_shape=(12, 12, 3))
    assert "\n" not in str(e.value)
