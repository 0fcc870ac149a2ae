"""One weights loader (``torch_import.load_variables`` -> ``jinterp.models.weights``): every format a user has,
converted once and cached, and a right diagnosis for every wrong file."""

from __future__ import annotations

import json
import struct

import jax
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.errors import JinterpError, MissingFileError, WeightsError
from jinterp.models import weights


@pytest.fixture(scope="module")
def r20():
    variables = backbones.init(backbones.create("resnet20"), jax.random.key(0))
    return variables, torch_import.to_state_dict("resnet20", variables)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JINTERP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _one_line_no_pickle_advice(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "allow_pickle" not in msg and "weights_only=False" not in msg, msg
    return msg


def test_shared_resnet20_loads_through_the_one_loader_and_is_cached(shared_dir, torch, cache, monkeypatch):
    path = shared_dir / "weights/resnet20-12fca82f.th"
    if not path.is_file():
        pytest.skip(f"pretrained weights not available: {path} is absent")
    variables, meta = torch_import.load_variables(path, "resnet20")
    _same(variables, torch_import.from_torch("resnet20", path))  # the 91.73 % of test_pretrained
    assert meta["arch"] == "resnet20" and meta["num_classes"] == 10 and meta["image_shape"] == [32, 32, 3]
    assert meta["converted_from"] == "torch" and meta["normalization"] == "cifar"
    cached = list((cache / "converted").glob("resnet20-*.npz"))
    assert len(cached) == 1 and meta["sha256"][:16] in cached[0].name

    def no_reading(*a, **k):
        raise AssertionError("converted again although cached")

    monkeypatch.setattr(weights, "read_state_dict", no_reading)
    again, _ = torch_import.load_variables(path, "resnet20")
    _same(again, variables)


def test_wrapped_prefixed_torch_file_any_suffix(tmp_path, torch, r20):
    variables, sd = r20
    wrapped = {"state_dict": {f"module.{k}": torch.tensor(v) for k, v in sd.items()}, "epoch": 3,
               "best_prec1": torch.tensor(91.7)}
    for name in ("r20.pt", "r20.pth", "r20.npz", "r20.weights"):  # the content decides, not the suffix
        torch.save(wrapped, tmp_path / name)
        got, meta = torch_import.load_variables(tmp_path / name, "resnet20")
        _same(got, variables)
    torch.save(wrapped, tmp_path / "legacy.th", _use_new_zipfile_serialization=False)
    _same(torch_import.load_variables(tmp_path / "legacy.th", "resnet20")[0], variables)


def test_npz_state_dict_and_flax_paths(tmp_path, r20):
    variables, sd = r20
    np.savez(tmp_path / "sd.npz", **sd)
    _same(torch_import.load_variables(tmp_path / "sd.npz", "resnet20")[0], variables)
    flat = {"/".join(k): np.asarray(v) for k, v in
            __import__("flax").traverse_util.flatten_dict(dict(variables)).items()}
    np.savez(tmp_path / "flax.npz", **flat)
    _same(torch_import.load_variables(tmp_path / "flax.npz", "resnet20")[0], variables)
    renamed = {k.replace("layer2_0/conv1", "layer2_0/conv_a"): v for k, v in flat.items()}
    np.savez(tmp_path / "renamed.npz", **renamed)
    with pytest.raises(WeightsError) as e:
        torch_import.load_variables(tmp_path / "renamed.npz", "resnet20")
    msg = _one_line_no_pickle_advice(e)
    assert "'params/layer2_0/conv1/kernel' (nearest: 'params/layer2_0/conv_a/kernel')" in msg
    assert "expected" in msg and "found" in msg and "corrupt" not in msg
    np.savez(tmp_path / "other.npz", **{"encoder.conv1.weight": sd["conv1.weight"], "w": np.zeros(3)})
    with pytest.raises(WeightsError) as e:
        torch_import.load_variables(tmp_path / "other.npz", "resnet20")
    msg = _one_line_no_pickle_advice(e)
    assert "no '__meta__' entry" in msg and "expected 97 keys like" in msg and "found 2:" in msg
    assert "'encoder.conv1.weight' (nearest: 'conv1.weight')" in msg and "corrupt" not in msg
    with pytest.raises(WeightsError, match="give --arch"):
        torch_import.load_variables(tmp_path / "flax.npz")


def test_wrong_files_get_the_right_diagnosis(tmp_path, torch, r20):
    _, sd = r20
    torch.save({k: torch.tensor(v) for k, v in sd.items()}, tmp_path / "r20.pth")
    with pytest.raises(WeightsError, match="is a directory.*r20.pth") as e:
        torch_import.load_variables(tmp_path, "resnet20")
    _one_line_no_pickle_advice(e)

    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")  # a pickled module, not a state dict
    with pytest.raises(WeightsError, match=r"state_dict\(\)") as e:
        torch_import.load_variables(tmp_path / "whole.pth", "resnet20")
    assert "corrupt" not in _one_line_no_pickle_advice(e)

    with pytest.raises(WeightsError, match="does not match resnet56") as e:
        torch_import.load_variables(tmp_path / "r20.pth", "resnet56")
    assert "missing keys (" in _one_line_no_pickle_advice(e)

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    import zipfile

    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as z:
        z.write(tmp_path / "obj.npy", "a.npy")
    with pytest.raises(WeightsError, match="pickled Python objects") as e:
        torch_import.load_variables(tmp_path / "pickled.npz", "resnet20")
    _one_line_no_pickle_advice(e)

    with pytest.raises(MissingFileError):
        torch_import.load_variables(tmp_path / "absent.th", "resnet20")
    with pytest.raises(WeightsError, match="--arch"):
        torch_import.load_variables(tmp_path / "r20.pth")


def _write_safetensors(path, arrays: dict):
    header, blobs, offset = {}, [], 0
    for k, v in arrays.items():
        b = np.ascontiguousarray(v, np.float32).tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_read_natively(tmp_path, r20, monkeypatch):
    """A hand-written file (the format itself) loads with the ``safetensors`` package made unimportable."""
    variables, sd = r20
    path = tmp_path / "r20.safetensors"
    _write_safetensors(path, sd)
    assert weights.detect_format(path) == "safetensors"
    monkeypatch.setitem(__import__("sys").modules, "safetensors", None)  # no dependency on the package
    _same(torch_import.load_variables(path, "resnet20")[0], variables)


def test_safetensors_from_the_package_equal_the_pth(tmp_path, torch, r20):
    """Files written by ``safetensors.torch`` / ``safetensors.numpy`` give exactly what the ``.pth`` gives."""
    st_torch = pytest.importorskip("safetensors.torch")
    st_numpy = pytest.importorskip("safetensors.numpy")
    _, sd = r20
    tensors = {k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()}
    torch.save(tensors, tmp_path / "r20.pth")
    st_torch.save_file(tensors, str(tmp_path / "r20_torch.safetensors"))
    st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "r20_np.safetensors"))
    want = torch_import.load_variables(tmp_path / "r20.pth", "resnet20")[0]
    for name in ("r20_torch.safetensors", "r20_np.safetensors"):
        _same(torch_import.load_variables(tmp_path / name, "resnet20")[0], want)


def test_safetensors_dtypes(tmp_path, torch):
    """BF16/F16/F64 come back as float32 exactly as ``.float()`` gives them; I64 keeps its integers."""
    st_torch = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    tensors = {"bf16": torch.randn(3, 5, generator=g).bfloat16(), "f16": torch.randn(4, generator=g).half(),
               "f64": torch.randn(2, 2, generator=g).double(), "i64": torch.arange(-3, 6).reshape(3, 3),
               "u8": torch.arange(7, dtype=torch.uint8)}
    st_torch.save_file(tensors, str(tmp_path / "d.safetensors"))
    got = weights.read_safetensors(tmp_path / "d.safetensors")
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        want = t.float().numpy() if t.is_floating_point() else t.numpy()
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want)


def test_damaged_safetensors_get_one_line_errors(tmp_path, r20):
    _, sd = r20
    good = tmp_path / "good.safetensors"
    _write_safetensors(good, {k: sd[k] for k in list(sd)[:3]})
    data = good.read_bytes()
    cases = {"short.safetensors": (data[:5], "shorter than its 8-byte header"),
             "header.safetensors": (data[:40], "truncated: its header claims"),
             "buffer.safetensors": (data[:-7], "do not fit its shape or the"),
             "json.safetensors": (data[:8] + b"{" + b"x" * (len(data) - 9), "unreadable safetensors header")}
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match=match) as e:
            weights.read_state_dict(tmp_path / name)
        assert "\n" not in str(e.value) and "save_file" in str(e.value), str(e.value)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    first = next(iter(header))
    header[first]["dtype"] = "C64"
    h = json.dumps(header).encode()
    (tmp_path / "dtype.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + data[8 + n:])
    with pytest.raises(WeightsError, match="dtype C64.*save it as float32"):
        weights.read_state_dict(tmp_path / "dtype.safetensors")


def test_safetensors_of_another_model_names_the_keys(tmp_path, torch, r20):
    st_torch = pytest.importorskip("safetensors.torch")
    _, sd = r20
    renamed = {k.replace("layer2.0.conv1", "layer2.0.conv_a"): torch.tensor(np.ascontiguousarray(v))
               for k, v in sd.items()}
    st_torch.save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(WeightsError, match="layer2.0.conv") as e:
        torch_import.load_variables(tmp_path / "renamed.safetensors", "resnet20")
    assert "\n" not in str(e.value)
    reshaped = {k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()}
    reshaped["linear.weight"] = torch.zeros(7, 64)
    reshaped["linear.bias"] = torch.zeros(8)
    st_torch.save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    with pytest.raises(WeightsError) as e:
        torch_import.load_variables(tmp_path / "reshaped.safetensors", "resnet20")
    assert "\n" not in str(e.value) and "linear" in str(e.value), str(e.value)


def test_unwritable_cache_still_loads(tmp_path, torch, r20, monkeypatch):
    variables, sd = r20
    torch.save({k: torch.tensor(v) for k, v in sd.items()}, tmp_path / "r20.pth")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("JINTERP_CACHE_DIR", str(blocker))
    with pytest.warns(UserWarning, match="JINTERP_CACHE_DIR"):
        got, _ = torch_import.load_variables(tmp_path / "r20.pth", "resnet20")
    _same(got, variables)
    assert issubclass(WeightsError, JinterpError)
