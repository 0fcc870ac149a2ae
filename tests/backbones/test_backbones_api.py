"""Registry, errors, weight import/export and storage; the PyTorch-semantics ops the backbones rely on."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.errors import ConfigError, LayerError, MissingFileError, ShapeError, WeightsError
from jinterp.nn import ops
from jinterp.nn.layers import ConvTranspose2d

RESNET20_NAMES = (
    "conv1", "bn1", "relu",
    "layer1.0", "layer1.1", "layer1.2", "layer1",
    "layer2.0", "layer2.1", "layer2.2", "layer2",
    "layer3.0", "layer3.1", "layer3.2", "layer3",
    "avgpool", "linear",
)


@functools.cache
def _resnet20_variables():
    return backbones.init(backbones.create("resnet20"), jax.random.key(0))


# ---- registry --------------------------------------------------------------------------------------------------


def test_archs_and_defaults():
    assert set(backbones.ARCHS) == {
        "vgg16", "vgg16_bn", "vgg11_bn_cladec", "alexnet", "resnet18", "resnet50",
        "resnet20", "resnet32", "resnet44", "resnet56", "convnet"}
    assert set(backbones.NORMALIZATION) == set(backbones.ARCHS)
    assert backbones.default_input_shape("vgg16") == (224, 224, 3)
    assert backbones.default_input_shape("resnet20") == (32, 32, 3)
    assert backbones.create("resnet20").num_classes == 10
    assert backbones.create("vgg11_bn_cladec").num_classes == 10
    assert backbones.create("alexnet").num_classes == 1000
    assert backbones.create("convnet", 4).num_classes == 4
    small = backbones.create("convnet", widths=[8, 8])  # a list is fine: stored as a (hashable) tuple
    assert backbones.init(small, jax.random.key(0), (16, 16, 1))["params"]["conv2"]["kernel"].shape == (3, 3, 8, 8)


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid archs: vgg16, vgg16_bn") as e:
        backbones.create("resnet21")
    assert "Did you mean" in str(e.value)
    with pytest.raises(ConfigError):
        backbones.layer_names("nope")
    with pytest.raises(ConfigError, match="bad keyword"):
        backbones.create("resnet20", width=3)


def test_layer_names():
    assert backbones.layer_names("resnet20") == RESNET20_NAMES
    assert backbones.layer_names("resnet20") is backbones.layer_names("resnet20")  # cached
    vgg = backbones.layer_names("vgg16")
    assert vgg[:5] == ("features.0", "features.1", "features.2", "features.3", "features.4")
    assert vgg[30:] == ("features.30", "avgpool", *(f"classifier.{i}" for i in range(7)))
    assert len(backbones.layer_names("vgg16_bn")) == 44 + 1 + 7
    assert backbones.layer_names("vgg11_bn_cladec") == (
        "conv0", "conv1", "conv2a", "conv2", "conv3a", "conv3", "conv4a", "conv4", "flat", "pred")
    assert backbones.layer_names("resnet50")[-4:] == ("layer4.2", "layer4", "avgpool", "fc")
    assert backbones.layer_names("convnet", widths=[8, 8]) == (
        "conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "avgpool", "fc")


def test_check_layers_lists_valid_names():
    assert backbones.check_layers("resnet20", "layer2") == ("layer2",)
    assert backbones.check_layers("resnet20", ["layer1.2", "linear"]) == ("layer1.2", "linear")
    with pytest.raises(LayerError) as e:
        backbones.check_layers("resnet20", ["layer2", "layer4"])
    msg = str(e.value)
    assert "'layer4'" in msg and "resnet20" in msg and ", ".join(RESNET20_NAMES) in msg
    assert isinstance(e.value, KeyError)
    with pytest.raises(LayerError, match="Valid layers: a, b"):
        backbones.check_layers(["a", "b"], "c")


def test_init_apply_shapes_and_modes():
    model = backbones.create("vgg11_bn_cladec")
    variables = backbones.init(model, jax.random.key(0), image_shape=(32, 32, 1))
    assert variables["params"]["conv0"]["conv1"]["kernel"].shape == (3, 3, 1, 32)
    assert variables["batch_stats"]["conv4"]["bnF"]["var"].shape == (512,)
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1))
    logits, feats = model.apply(variables, x)
    assert logits.shape == (4, 10) and feats["conv2a"].shape == (4, 8, 8, 128) and feats["flat"].shape == (4, 512)
    (train_logits, _), updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    assert train_logits.shape == (4, 10)
    assert not np.allclose(updates["batch_stats"]["conv0"]["bnF"]["mean"], 0.0)
    assert not np.allclose(train_logits, logits)
    with pytest.raises(ShapeError, match="NHWC"):
        model.apply(variables, x[0])


def test_normalize():
    img = np.full((1, 2, 2, 3), 255, np.uint8)
    out = backbones.normalize(img, "resnet20")
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
                               rtol=1e-6)
    assert backbones.normalize(img, "convnet").max() == 1.0
    with pytest.raises(ConfigError):
        backbones.normalize(img, "caffe")


def test_convnet_learns_quickly():
    """A few SGD steps on an easy 6-class problem lower the loss: the module trains (BN, grads, labels).

    Also guards that the pools differentiate under jit (they once did not: reduce_window with a jnp init).
    """
    model = backbones.create("convnet", widths=(8, 16, 16, 16))
    variables = backbones.init(model, jax.random.key(0), (28, 28, 3))
    y = jnp.arange(48) % 6
    # Class k: a bright square in one of six positions over noise.
    x = jax.random.uniform(jax.random.key(1), (48, 28, 28, 3)) * 0.3
    rows, cols = (y // 3) * 14, (y % 3) * 9
    yy, xx = jnp.mgrid[:28, :28]
    mask = (yy[None] >= rows[:, None, None]) & (yy[None] < rows[:, None, None] + 10) & \
           (xx[None] >= cols[:, None, None]) & (xx[None] < cols[:, None, None] + 9)
    x = x + mask[..., None] * 0.7

    def loss_fn(params, stats):
        (logits, _), upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                       mutable=["batch_stats"])
        onehot = jax.nn.one_hot(y, 6)
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), upd["batch_stats"]

    @jax.jit
    def step(params, stats):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), stats, loss

    params, stats = variables["params"], variables["batch_stats"]
    losses = []
    for _ in range(30):
        params, stats, loss = step(params, stats)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


# ---- weight import / export --------------------------------------------------------------------------------------


def test_name_map_is_explicit_and_invertible():
    m = torch_import.name_map("resnet18")
    assert m["layer2.0.downsample.0.weight"] == (("params", "layer2_0", "downsample_0", "kernel"), (128, 64, 1, 1))
    assert m["layer2.0.downsample.1.running_var"][0] == ("batch_stats", "layer2_0", "downsample_1", "var")
    assert m["bn1.weight"][0] == ("params", "bn1", "scale")
    assert m["fc.weight"][1] == (1000, 512)
    assert torch_import.name_map("vgg11_bn_cladec")["conv2a.bnF.running_mean"][0] == (
        "batch_stats", "conv2a", "bnF", "mean")
    variables = _resnet20_variables()
    sd = torch_import.to_state_dict("resnet20", variables)
    assert sd["layer1.0.conv1.weight"].shape == (16, 16, 3, 3)
    back = torch_import.from_torch("resnet20", sd)
    jax.tree.map(np.testing.assert_array_equal, back, variables)


def test_weight_mismatch_lists_keys():
    sd = torch_import.to_state_dict("resnet20", _resnet20_variables())
    with pytest.raises(WeightsError) as e:
        torch_import.from_torch("resnet32", sd)
    msg = str(e.value)
    assert "missing keys (60)" in msg and "layer1.3.bn1.bias, layer1.3.bn1.running_mean" in msg and "\n" not in msg
    # a renamed key is named with its nearest expected match
    renamed = {("encoder." + k if k.startswith("layer1.") else k): v for k, v in sd.items()}
    with pytest.raises(WeightsError, match=r"layer1.0.bn1.bias \(found encoder.layer1.0.bn1.bias\?\)"):
        torch_import.from_torch("resnet20", renamed)
    with pytest.raises(WeightsError) as e:
        torch_import.from_torch("convnet", sd)
    msg = str(e.value)
    assert "unexpected keys" in msg and "layer1.0.bn1.running_mean" in msg and "missing keys" in msg
    with pytest.raises(WeightsError, match=r"shape mismatches \(2\): linear.bias \(10,\) \(expected \(100,\)\)"):
        torch_import.from_torch("resnet20", sd, num_classes=100)
    wrong = dict(sd, **{"conv1.weight": np.zeros((16, 3, 5, 5), np.float32)})
    with pytest.raises(WeightsError, match=r"conv1.weight \(16, 3, 5, 5\) \(expected \(16, 3, 3, 3\)\)"):
        torch_import.from_torch("resnet20", wrong)


def test_from_torch_file(tmp_path, torch):
    sd = torch_import.to_state_dict("resnet20", _resnet20_variables())
    wrapped = {"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in sd.items()}, "best_prec1": 0.0}
    wrapped["state_dict"]["module.bn1.num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "r20.th"
    torch.save(wrapped, path)
    got = torch_import.from_torch("resnet20", path)
    jax.tree.map(np.testing.assert_array_equal, got, _resnet20_variables())
    with pytest.raises(MissingFileError, match="absent.th"):
        torch_import.from_torch("resnet20", tmp_path / "absent.th")
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.th is not a readable PyTorch checkpoint"):
        torch_import.from_torch("resnet20", junk)


# ---- npz storage -----------------------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    variables = _resnet20_variables()
    path = torch_import.save_variables(tmp_path / "sub" / "r20.npz", variables, {"arch": "resnet20", "seed": 0})
    assert path.is_file() and not (tmp_path / "sub" / "r20.npz.tmp").exists()
    loaded, meta = torch_import.load_variables(path, arch="resnet20")
    assert meta["arch"] == "resnet20" and meta["seed"] == 0 and meta["normalization"] == "cifar"
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    x = jnp.ones((1, 32, 32, 3))
    model = backbones.create(meta["arch"])
    np.testing.assert_array_equal(model.apply(loaded, x)[0], model.apply(variables, x)[0])
    with pytest.raises(WeightsError, match="not 'resnet56'"):
        torch_import.load_variables(path, arch="resnet56")
    with pytest.raises(ConfigError, match="arch"):
        torch_import.save_variables(tmp_path / "x.npz", variables, {})


def test_load_corrupt_or_missing(tmp_path):
    path = torch_import.save_variables(tmp_path / "r20.npz", _resnet20_variables(), {"arch": "resnet20"})
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated.npz is corrupt or truncated"):
        torch_import.load_variables(truncated)
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(data[:1000] + bytes(b ^ 0xFF for b in data[1000:1100]) + data[1100:])
    with pytest.raises(WeightsError, match="flipped.npz"):
        torch_import.load_variables(flipped)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(WeightsError, match="not written by jinterp"):
        torch_import.load_variables(plain)
    with pytest.raises(MissingFileError, match="nothing.npz"):
        torch_import.load_variables(tmp_path / "nothing.npz")


# ---- ops the backbones rely on, against PyTorch -----------------------------------------------------------------


@pytest.mark.parametrize("size,k,s,p", [(7, 3, 2, 0), (8, 3, 2, 1), (13, 2, 2, 0), (6, 3, 3, 1), (55, 3, 2, 0)])
def test_max_pool_ceil_mode_vs_torch(torch, size, k, s, p):
    x = np.random.default_rng(0).standard_normal((2, size, size + 1, 3)).astype(np.float32)
    for ceil in (False, True):
        want = torch.nn.functional.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), k, s, p, ceil_mode=ceil)
        got = ops.max_pool2d(jnp.asarray(x), k, s, p, ceil_mode=ceil)
        np.testing.assert_array_equal(np.asarray(got), want.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("size,out", [((5, 7), (3, 3)), ((10, 13), (7, 7)), ((3, 2), (7, 6)), ((4, 4), (6, 6)),
                                      ((9, 9), (1, 1)), ((14, 11), (4, 5))])
def test_adaptive_avg_pool_vs_torch(torch, size, out):
    x = np.random.default_rng(1).standard_normal((2, *size, 4)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out)
    got = ops.adaptive_avg_pool2d(jnp.asarray(x), out)
    np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k,s,p,op", [(4, 2, 1, 0), (3, 2, 1, 1), (3, 1, 1, 0), (5, 3, 2, 2)])
def test_conv_transpose_vs_torch(torch, k, s, p, op):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    layer = torch.nn.ConvTranspose2d(3, 4, k, s, p, output_padding=op)
    want = layer(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().permute(0, 2, 3, 1).numpy()
    params = {"kernel": jnp.asarray(layer.weight.detach().numpy().transpose(2, 3, 0, 1)),
              "bias": jnp.asarray(layer.bias.detach().numpy())}
    got = ConvTranspose2d(4, k, s, p, op).apply({"params": params}, jnp.asarray(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_arch_kwargs_from_saved_variables_rebuilds_a_slim_convnet():
    import jax

    model = backbones.create("convnet", num_classes=6, widths=(4, 8, 8, 16))
    variables = backbones.init(model, jax.random.key(0), (16, 16, 3))
    assert backbones.arch_kwargs_from("convnet", variables) == {"widths": (4, 8, 8, 16)}
    assert backbones.arch_kwargs_from("resnet20", {"params": {}}) == {}
