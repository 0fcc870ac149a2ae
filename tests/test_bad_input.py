"""Bad input, end to end: every wrong thing a user can hand jinterp gets a jinterp error naming it and the fix.

Each case states the error class, words that name the problem and words that name the fix; a case passes only
if the call raises exactly that kind of ``JinterpError`` (never a traceback from inside JAX/Flax/NumPy, a NaN
result or a silent wrong answer). Through the command line the same errors print as one line
``jinterp: error: ...`` and exit with status 2. Property-based tests (hypothesis) throw random ``--set``
overrides, data specs, damaged files and NaN/Inf-laced images at the same entry points.

Covered: malformed configs and ``--set`` overrides (train-backbone and every method whose CLI exists), wrong
image shapes/dtypes/value ranges, NaN/Inf inputs, unknown layers, weight files for another architecture,
truncated/corrupt weight/data/checkpoint files, empty data sets, labels out of range, concept masks of the wrong
shape (dissection), bad data specs.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jinterp import backbones, cli, data
from jinterp.backbones import torch_import
from jinterp.core import config as C
from jinterp.core import features
from jinterp.core.checkpoint import Checkpointer
from jinterp.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    JinterpError,
    LayerError,
    MissingFileError,
    ShapeError,
    StorageError,
    WeightsError,
)
from jinterp.metrics import dissection as dis

SLIM = (4, 8, 8, 8)  # a slim convnet: every case compiles in well under a second
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------------------------------- helpers
@dataclasses.dataclass
class Case:
    id: str
    call: Callable[[], object]
    error: type[JinterpError]
    problem: tuple[str, ...]  # words naming what is wrong
    fix: tuple[str, ...]      # words naming how to fix it


def check_case(case: Case) -> JinterpError:
    with pytest.raises(JinterpError) as e:
        case.call()
    err = e.value
    assert isinstance(err, case.error), f"{case.id}: {type(err).__name__} is not a {case.error.__name__}: {err}"
    msg = str(err).lower()
    for w in case.problem + case.fix:
        assert w.lower() in msg, f"{case.id}: {w!r} missing from: {err}"
    assert "traceback" not in msg
    return err


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("jinterp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in err.lower(), f"{w!r} missing from: {err}"


@pytest.fixture(scope="module")
def net():
    model = backbones.create("convnet", widths=SLIM)
    return model, backbones.init(model, jax.random.key(0), (32, 32, 3))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Small files of every kind the readers take, written once; cases copy and damage them."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    out = {}
    out["npz"] = root / "good.npz"
    np.savez(out["npz"], x=x, y=y)
    # MNIST idx (gzip) and a CIFAR batch folder
    mn = root / "mnist"
    mn.mkdir()
    for prefix in ("train", "t10k"):
        img = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 5, 28, 28) + bytes(5 * 28 * 28)
        lab = struct.pack(">BBBBI", 0, 0, 0x08, 1, 5) + bytes(5)
        (mn / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
        (mn / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))
    out["mnist"] = mn
    cf = root / "cifar"
    cf.mkdir()
    batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cf / name).write_bytes(pickle.dumps(batch))
    out["cifar"] = cf
    # an image folder
    from PIL import Image

    fo = root / "folder"
    for c in ("cat", "dog"):
        (fo / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(x[i]).save(fo / c / f"{i}.png")
    out["folder"] = fo
    # saved variables of the slim convnet and of the default convnet
    model = backbones.create("convnet", widths=SLIM)
    v = backbones.init(model, jax.random.key(0), (32, 32, 3))
    out["weights"] = torch_import.save_variables(root / "slim.npz", jax.tree.map(np.asarray, v),
                                                 {"arch": "convnet", "num_classes": 6})
    wide = backbones.init(backbones.create("convnet", widths=(8, 8, 8, 8)), jax.random.key(0), (32, 32, 3))
    out["weights_wide"] = torch_import.save_variables(root / "wide.npz", jax.tree.map(np.asarray, wide),
                                                      {"arch": "convnet", "num_classes": 6})
    out["weights_r20"] = root / "r20.npz"  # an arch mismatch only needs the meta entry
    torch_import.save_variables(out["weights_r20"], {"params": {"x": np.zeros(2, np.float32)}}, {"arch": "resnet20"})
    return out


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _truncate(path: Path, frac: float) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * frac)])
    return path


# ============================================================================ 1. configs and --set overrides
@pytest.fixture
def stub_training(monkeypatch):
    """train-backbone's program replaced by a recorder: the CLI's parsing/validation runs, no training."""
    import jinterp.core.train_backbone as tb

    seen = []

    def fake(cfg, workdir, progress=True, **kw):
        seen.append(cfg)
        return {"arch": cfg.arch, "test_accuracy": 0.5, "step": 0, "wall_time_s": 0.0, "params": "-"}

    monkeypatch.setattr(tb, "train_backbone", fake)
    return seen


SET_CASES = [  # (override, error words) -- each must exit 2 with one line before any work starts
    ("optim.lrr=0.1", ("unknown config key 'optim.lrr'", "valid keys", "optim.lr")),
    ("batch_size=abc", ("cannot set batch_size='abc'", "field type int")),
    ("steps=1.5", ("expected an int",)),
    ("optim.lr=nan", ("optim.lr", "finite")),
    ("optim.lr=inf", ("optim.lr", "finite")),
    ("epochs=-inf", ("epochs", "finite")),
    ("optim.lr=-1", ("optim.lr must be > 0",)),
    ("optim.momentum=-0.5", ("momentum", "[0, 1)")),
    ("optim.b2=1", ("b2", "[0, 1)")),
    ("optim.decay_steps=0.5,-1", ("decay_steps must be > 0",)),
    ("label_smoothing=2", ("label_smoothing", "[0, 1)")),
    ("crop_pad=-1", ("crop_pad must be >= 0",)),
    ("image_size=0", ("image_size must be >= 1",)),
    ("widths=0,8,8,8", ("widths must be positive",)),
    ("arch=", ("must not be empty", "arch=convnet")),
    ("batch_size=0", ("batch_size must be > 0",)),
    ("epochs=-1", ("steps > 0 or epochs > 0",)),
    ("bf16=maybe", ("expected a bool",)),
    ("augment=rotate", ("expected one of ['none', 'flip', 'flip_crop']",)),
    ("optim=sgd", ("optim is a group of settings", "optim.lr")),
    ("steps", ("not of the form key=value", "optim.lr=0.1")),
    ("=3", ("empty key", "valid keys")),
    ("widths=(4,8", ("cannot set widths",)),
]


@pytest.mark.parametrize("item,words", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_set_override_is_one_line(capsys, tmp_path, stub_training, item, words):
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--set", item)
    assert_one_line_error(code, err, *words)
    assert not stub_training and not (tmp_path / "w").exists()  # nothing started, nothing written


KEYS = C.valid_keys(C.TrainBackboneConfig) + ["nonsense", "optim.nope", "optim", ""]
VALUES = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["nan", "inf", "-inf", "1e400", "true", "none", "()", "(1,2", "a,b", "0,-1"]))


@HYP
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_set_override_is_rejected_cleanly_or_yields_a_valid_config(capsys, stub_training, tmp_path, key, value):
    """Property: an arbitrary --set either exits 2 with one line, or reaches the program with a config that
    validates and holds only finite numbers (never a traceback, never NaN in a config)."""
    stub_training.clear()
    capsys.readouterr()
    # Keep the override away from real files: a valid data/weights spec only reaches the (stubbed) program.
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--set", f"{key}={value}")
    if code == 0:
        (cfg,) = stub_training
        cfg.validate()
        flat = C.to_dict(cfg)
        nums = [v for v in jax.tree.leaves(flat) if isinstance(v, float)]
        assert all(np.isfinite(nums)), flat
    else:
        assert_one_line_error(code, err)
        assert not stub_training


@HYP
@given(d=st.dictionaries(st.sampled_from(["arch", "steps", "optim", "seed", "epochs", "bogus", "widths"]),
                         st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                                   st.text(max_size=4), st.lists(st.integers(-2, 9), max_size=3),
                                   st.dictionaries(st.sampled_from(["lr", "name", "bad"]),
                                                   st.one_of(st.floats(allow_nan=True), st.text(max_size=4)),
                                                   max_size=2)),
                         max_size=4))
def test_config_from_malformed_dict_is_a_config_error_or_valid(d):
    """A stored config.json / checkpoint meta read back with from_dict: wrong types, unknown keys, NaN."""
    try:
        cfg = C.from_dict(C.TrainBackboneConfig, d)
    except ConfigError as e:
        assert "expected" in str(e) or "unknown config key" in str(e) or "mapping" in str(e)
        return
    nums = [v for v in jax.tree.leaves(C.to_dict(cfg)) if isinstance(v, float)]
    assert all(np.isfinite(nums))


def test_bad_normalization_and_arch_fail_before_anything_is_written(tmp_path):
    from jinterp.core.train_backbone import train_backbone

    for sets, words in ((["normalization=foo"], ("unknown normalization 'foo'", "'arch'")),
                        (["arch=resnet21"], ("unknown backbone 'resnet21'", "resnet20"))):
        cfg = C.apply_overrides(C.TrainBackboneConfig.tiny(), sets)
        check_case(Case(sets[0], lambda cfg=cfg: train_backbone(cfg, tmp_path / "w", progress=False), ConfigError,
                        words[:1], words[1:]))
        assert not (tmp_path / "w").exists()


# Every method whose CLI exists rejects an unknown key, an unparsable value and an invalid value with one line.
METHOD_BAD_VALUE = {"cladec": ("alphas=0,2", "α must be in [0, 1]"), "csg": ("epochs=0", "epochs"),
                    "graph": ("iterations=0", "iterations"), "explainer": ("batch_size=0", "batch_size must be > 0"),
                    "basis": ("quantile=2", "quantile must lie in (0, 1)")}
METHOD_CASES = [(m, kind) for m in METHOD_BAD_VALUE for kind in ("unknown_key", "unparsable", "invalid")]


@pytest.mark.parametrize("method,kind", METHOD_CASES, ids=[f"{m}-{k}" for m, k in METHOD_CASES])
def test_method_cli_rejects_bad_set(capsys, tmp_path, method, kind):
    module = cli.RESERVED[method][0]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        pytest.skip(f"jinterp {method}: {module} does not exist yet")
    if not hasattr(mod, "run"):
        pytest.skip(f"jinterp {method}: {module} has no run() yet")
    item, words = {"unknown_key": ("nonsense=1", ("unknown config key 'nonsense'", "valid keys", "seed")),
                   "unparsable": ("seed=abc", ("cannot set seed='abc'", "field type int")),
                   "invalid": (METHOD_BAD_VALUE[method][0], (METHOD_BAD_VALUE[method][1],))}[kind]
    workdir = tmp_path / "w"
    code, _, err = run_cli(capsys, method, "--config", "tiny", "--workdir", str(workdir), "--set", item)
    assert_one_line_error(code, err, *words)
    assert not workdir.exists()  # rejected before the program started


# ======================================================================== 2. images, layers, weights -> features
def _img(shape=(2, 32, 32, 3), dtype=np.uint8, fill=0):
    return np.full(shape, fill, dtype)


def feature_cases(net, files) -> list[Case]:
    m, v = net
    ex = lambda images, layers=("conv1",), **kw: (lambda: features.extract(m, v, images, list(layers), **{
        "batch_size": 2, **kw}))
    wide_vars = torch_import.load_variables(files["weights_wide"], "convnet")[0]
    cl = backbones.create("vgg11_bn_cladec")
    cl_vars = backbones.variable_shapes(cl, (32, 32, 3))
    cl_vars = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cl_vars)
    nan = _img(dtype=np.float32, fill=0.5)
    nan[1, 3, 4, 0] = np.nan
    inf = _img(dtype=np.float32, fill=0.5)
    inf[0, 0, 0, 2] = np.inf
    return [
        Case("no batch axis", ex(_img((32, 32, 3))), ShapeError, ("4-d nhwc", "(32, 32, 3)"), ("images[none]",)),
        Case("5-d images", ex(_img((1, 2, 32, 32, 3))), ShapeError, ("4-d",), ("batch axis",)),
        Case("empty images", ex(_img((0, 32, 32, 3))), DataError, ("empty",), ("at least one image",)),
        Case("int32 dtype", ex(_img(dtype=np.int32)), ShapeError, ("dtype int32",), ("astype(np.float32) / 255",)),
        Case("bool dtype", ex(_img(dtype=bool)), ShapeError, ("dtype bool",), ("keep them as uint8",)),
        Case("complex dtype", ex(_img(dtype=np.complex64)), ShapeError, ("dtype complex64",), ("uint8",)),
        Case("float 0..255", ex(_img(dtype=np.float32, fill=200.0)), ShapeError, ("[0, 1]", "200"),
             ("divide 0..255 floats by 255",)),
        Case("negative floats", ex(_img(dtype=np.float32, fill=-0.5)), ShapeError, ("[0, 1]", "-0.5"),
             ("preprocess=",)),
        Case("NaN pixels", ex(nan), ShapeError, ("nan or inf",), ("clean or drop",)),
        Case("Inf pixels", ex(inf), ShapeError, ("nan or inf",), ("clean or drop",)),
        Case("NaN in a streamed chunk", lambda: list(features.iter_features(m, v, [_img(), nan], ["conv1"], 2)),
             ShapeError, ("a batch of images contain nan",), ("clean or drop",)),
        Case("chunks of two sizes", lambda: list(features.iter_features(
            m, v, [_img(), _img((2, 40, 40, 3))], ["conv1"], 2)), ShapeError, ("(40, 40, 3)", "(32, 32, 3)"),
            ("resize",)),
        Case("1-channel images, RGB weights", ex(_img((2, 32, 32, 1))), WeightsError,
             ("(32, 32, 1)", "conv1", "(3, 3, 3, 4)"), ("channels or size", "convert or resize")),
        Case("4-channel images", ex(_img((2, 32, 32, 4))), WeightsError, ("(3, 3, 4, 4)",), ("convert or resize",)),
        Case("images too small", ex(_img((2, 4, 4, 3)), ("fc",)), ShapeError, ("4x4 px are too small",),
             ("at least 8x8",)),
        Case("cladec vgg on 64 px", lambda: features.extract(cl, cl_vars, _img((1, 64, 64, 3)), ["pred"], 1),
             WeightsError, ("(64, 64, 3)", "pred", "(512, 10)", "(2048, 10)"), ("resize",)),
        Case("variables of another width", lambda: features.extract(m, wide_vars, _img(), ["conv1"], 2),
             WeightsError, ("conv1", "given (3, 3, 3, 8) vs needed (3, 3, 3, 4)"), ("another architecture, width",)),
        Case("unknown layer", ex(_img(), ("conv9",)), LayerError, ("unknown layer name(s) ['conv9']",),
             ("valid names", "relu3")),
        Case("torchvision name on convnet", ex(_img(), ("features.28",)), LayerError, ("features.28",),
             ("valid names",)),
        Case("no layers", ex(_img(), ()), LayerError, ("no layers requested",), ("valid names",)),
        Case("batch_size 0", ex(_img(), batch_size=0), ConfigError, ("batch_size", "0"), ("positive int",)),
        Case("batch_size float", ex(_img(), batch_size=2.5), ConfigError, ("batch_size", "2.5"), ("positive int",)),
        Case("unknown preprocess", ex(_img(), preprocess="zscore"), ConfigError, ("'zscore'",), ("valid:", "unit")),
        Case("feature_shapes unknown layer", lambda: features.feature_shapes(m, v, (32, 32, 3), ["pool9"]),
             LayerError, ("pool9",), ("valid names",)),
        Case("unknown arch", lambda: backbones.create("resnet21"), ConfigError, ("unknown backbone 'resnet21'",),
             ("did you mean", "resnet20")),
        Case("zero classes", lambda: backbones.create("convnet", 0), ConfigError, ("num_classes must be >= 1",),
             ("got 0",)),
        Case("bad module kwarg", lambda: backbones.create("convnet", depth=3), ConfigError, ("['depth']",),
             ("bad keyword",)),
        Case("init with 2-d shape", lambda: backbones.init(m, jax.random.key(0), (32, 32)), ShapeError,
             ("(32, 32)",), ("(h, w, c) with positive sizes",)),
        Case("check_layers typo", lambda: backbones.check_layers("resnet20", ["layer4"]), LayerError,
             ("'layer4'",), ("valid layers", "layer3")),
        Case("normalize 2-channel images", lambda: backbones.normalize(_img((1, 4, 4, 2)), "resnet20"), ShapeError,
             ("3 channels, images have 2",), ("convert the images",)),
    ]


FEATURE_IDS = ["no batch axis", "5-d images", "empty images", "int32 dtype", "bool dtype", "complex dtype",
               "float 0..255", "negative floats", "NaN pixels", "Inf pixels", "NaN in a streamed chunk",
               "chunks of two sizes", "1-channel images, RGB weights", "4-channel images", "images too small",
               "cladec vgg on 64 px", "variables of another width", "unknown layer", "torchvision name on convnet",
               "no layers", "batch_size 0", "batch_size float", "unknown preprocess",
               "feature_shapes unknown layer", "unknown arch", "zero classes", "bad module kwarg",
               "init with 2-d shape", "check_layers typo", "normalize 2-channel images"]


@pytest.mark.parametrize("case_id", FEATURE_IDS)
def test_feature_extraction_bad_input(net, files, case_id):
    (case,) = [c for c in feature_cases(net, files) if c.id == case_id]
    check_case(case)


def test_feature_case_table_is_complete(net, files):
    assert [c.id for c in feature_cases(net, files)] == FEATURE_IDS


@HYP
@given(shape=st.tuples(st.integers(1, 3), st.sampled_from([16, 32]), st.sampled_from([16, 32]),
                       st.sampled_from([1, 3])),
       dtype=st.sampled_from([np.float32, np.float64, np.float16]),
       bad=st.lists(st.tuples(st.floats(0, 1), st.sampled_from([np.nan, np.inf, -np.inf])), min_size=1, max_size=3))
def test_any_nan_or_inf_pixel_is_refused_before_compute(net, shape, dtype, bad):
    m, v = net
    x = np.full(shape, 0.25, dtype)
    flat = x.reshape(-1)
    for pos, val in bad:
        flat[int(pos * (flat.size - 1))] = val
    with pytest.raises(ShapeError, match="NaN or Inf"):
        features.extract(m, v, x, ["conv1"], batch_size=2)


def test_damaged_feature_cache_is_rebuilt_not_trusted(net, tmp_path):
    """A cache whose files were truncated after it was marked complete is extracted again, not read as garbage."""
    m, v = net
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    good = features.extract(m, v, x, ["conv1", "fc"], batch_size=2)
    features.extract(m, v, x, ["conv1", "fc"], batch_size=2, cache_dir=tmp_path)
    for f in tmp_path.rglob("*.npy"):
        _truncate(f, 0.4)
    again = features.extract(m, v, x, ["conv1", "fc"], batch_size=2, cache_dir=tmp_path)
    for k in good:
        np.testing.assert_allclose(np.asarray(again[k]), good[k], rtol=1e-6, err_msg=k)


def test_feature_cache_under_a_file_is_a_storage_error(net, tmp_path):
    m, v = net
    (tmp_path / "f").write_text("x")
    check_case(Case("cache dir under a file", lambda: features.extract(
        m, v, _img(), ["conv1"], batch_size=2, cache_dir=tmp_path / "f" / "sub"), StorageError,
        ("feature cache", "not a directory"), ("writable cache_dir",)))


# ============================================================================================ 3. weight files
def weight_cases(files, tmp: Path) -> list[Case]:
    w = files["weights"]
    lv = lambda p, arch="convnet": (lambda: torch_import.load_variables(p, arch))
    flipped = _copy(w, tmp / "flipped.npz")
    raw = bytearray(flipped.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 8] = bytes(b ^ 0xFF for b in raw[mid:mid + 8])
    flipped.write_bytes(bytes(raw))
    text = tmp / "notes.npz"
    text.write_text("these are not weights\n")
    plain = tmp / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    cases = [Case(f"truncated to {int(f * 100)}%", lv(_truncate(_copy(w, tmp / f"t{f}.npz"), f)), WeightsError,
                  ("corrupt or truncated",), (str(tmp),)) for f in (0.0, 0.05, 0.5, 0.95, 0.999)]
    cases += [
        Case("bytes flipped (CRC)", lv(flipped), WeightsError, ("corrupt or truncated",), ("flipped.npz",)),
        Case("a text file", lv(text), WeightsError, ("corrupt or truncated",), ("not a jinterp variables",)),
        Case("an npz without meta", lv(plain), WeightsError, ("no '__meta__' entry",), ("save_variables",)),
        Case("missing file", lv(tmp / "nope.npz"), MissingFileError, ("not found",), ("nope.npz",)),
        Case("resnet20 file for convnet", lv(files["weights_r20"]), WeightsError, ("'resnet20', not 'convnet'",),
             ("holds variables for",)),
        Case("torch state_dict of another width", lambda: torch_import.from_torch(
            "convnet", torch_import.to_state_dict("convnet", torch_import.load_variables(files["weights_wide"])[0],
                                                  widths=(8, 8, 8, 8)), widths=SLIM),
             WeightsError, ("conv1.weight",), ("shape",)),
    ]
    return cases


WEIGHT_IDS = ["truncated to 0%", "truncated to 5%", "truncated to 50%", "truncated to 95%", "truncated to 99%",
              "bytes flipped (CRC)", "a text file", "an npz without meta", "missing file", "resnet20 file for convnet",
              "torch state_dict of another width"]


@pytest.mark.parametrize("case_id", WEIGHT_IDS)
def test_weight_file_bad_input(files, tmp_path, case_id):
    (case,) = [c for c in weight_cases(files, tmp_path) if c.id == case_id]
    check_case(case)


@HYP
@given(cut=st.floats(0, 0.9999), flip=st.one_of(st.none(), st.floats(0, 1)))
def test_any_truncated_or_bit_flipped_weight_file_is_refused(files, tmp_path_factory, cut, flip):
    """Property: a damaged variables file never loads (every zip member's CRC is checked)."""
    p = tmp_path_factory.mktemp("w") / "w.npz"
    raw = bytearray(files["weights"].read_bytes())
    if flip is not None:
        i = int(flip * (len(raw) - 1))
        raw[i] ^= 0x41
    p.write_bytes(bytes(raw[: int(len(raw) * cut)] if flip is None else raw))
    try:
        variables, meta = torch_import.load_variables(p, "convnet")
    except WeightsError as e:
        assert str(p) in str(e)
        return
    # A flip in bytes no reader looks at (zip comment/padding) may load: then the content must be intact.
    good, _ = torch_import.load_variables(files["weights"], "convnet")
    jax.tree.map(np.testing.assert_array_equal, variables, good)


def test_train_backbone_weights_for_another_width_via_cli(capsys, tmp_path, files):
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--data", "synthparts:size=32,n_train=16,n_test=8", "--set", "batch_size=8",
                           "--set", "widths=4,8,8,8", "--weights", str(files["weights_wide"]))
    assert_one_line_error(code, err, "does not fit convnet", "conv1", "check --arch and the number of classes")


def test_train_backbone_weights_of_another_arch_via_cli(capsys, tmp_path, files):
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--data", "synthparts:size=32,n_train=16,n_test=8", "--set", "batch_size=8",
                           "--weights", str(files["weights_r20"]))
    assert_one_line_error(code, err, "holds variables for 'resnet20', not 'convnet'")


# =============================================================================================== 4. checkpoints
def _ck_state(scale: float = 1.0):
    from jinterp.core import train
    from jinterp.core.config import OptimConfig

    params = {"conv": {"kernel": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) * scale}, "fc": {"b": jnp.ones(2)}}
    tx, _ = train.make_optimizer(OptimConfig(name="adam", lr=1e-3), 10, params)
    return train.create_train_state({"params": params}, tx, jax.random.PRNGKey(3))


@pytest.fixture(scope="module")
def pristine_ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ck") / "checkpoints"
    with Checkpointer(d, keep=3, config={"lr": 1.0}) as ck:
        ck.save(4, _ck_state().replace(step=jnp.int32(4)))
    return d


CKPT_FILES = ["_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/manifest.ocdbt",
              "state/ocdbt.process_0/manifest.ocdbt", "state/ocdbt.process_0/d/*", "state/d/*", "state/_sharding",
              "state/array_metadatas/process_0"]
CKPT_CASES = [(f, how) for f in CKPT_FILES for how in ("truncate", "garbage")]


@pytest.mark.parametrize("name,how", CKPT_CASES, ids=[f"{f}-{h}" for f, h in CKPT_CASES])
def test_damaged_checkpoint_file_is_refused_or_harmless(pristine_ckpt, tmp_path, name, how):
    """Damage one file of a committed checkpoint: restoring raises CheckpointError naming the step directory
    (and leaves every file as it was), or, if that file is not needed, restores exactly what was saved. A
    corrupted checkpoint is never loaded as something else."""
    d = _copy(pristine_ckpt, tmp_path / "checkpoints")
    targets = sorted((d / "4").glob(name))
    if not targets:
        pytest.skip(f"this orbax version writes no {name}")
    for t in targets:
        if t.is_file():
            t.write_bytes(t.read_bytes()[: t.stat().st_size // 2] if how == "truncate" else b"\x00garbage{")
    snapshot = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    target = _ck_state(scale=0.0)
    try:
        with Checkpointer(d, config={"lr": 1.0}) as ck:
            restored, meta = ck.restore(target)
    except CheckpointError as e:
        msg = str(e)
        assert str(d) in msg and "left untouched" in msg and "--workdir" in msg, msg
    else:
        saved = _ck_state().replace(step=jnp.int32(4))
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(saved))
        assert meta["step"] == 4
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == snapshot


def checkpoint_cases(tmp: Path) -> list[Case]:
    afile = tmp / "ckfile"
    afile.write_text("x")
    with Checkpointer(tmp / "ok", config={"lr": 1.0}) as ck:
        ck.save(2, _ck_state().replace(step=jnp.int32(2)))

    def other_shapes():
        from jinterp.core import train
        from jinterp.core.config import OptimConfig

        params = {"conv": {"kernel": jnp.zeros((3, 5))}, "fc": {"b": jnp.ones(2)}}
        tx, _ = train.make_optimizer(OptimConfig(name="adam", lr=1e-3), 10, params)
        with Checkpointer(tmp / "ok", config={"lr": 1.0}) as ck:
            ck.restore(train.create_train_state({"params": params}, tx, jax.random.PRNGKey(3)))

    def other_config():
        with Checkpointer(tmp / "ok", config={"lr": 2.0}) as ck:
            ck.restore(_ck_state())

    def empty():
        with Checkpointer(tmp / "empty") as ck:
            ck.restore(_ck_state())

    return [
        Case("checkpoint dir is a file", lambda: Checkpointer(afile), CheckpointError, ("not a directory",),
             ("new --workdir",)),
        Case("checkpoint of other shapes", other_shapes, CheckpointError, ("does not match", "(3, 4)", "(3, 5)"),
             ("new --workdir",)),
        Case("checkpoint of another config", other_config, CheckpointError, ("different config", "lr"),
             ("original settings",)),
        Case("no checkpoint", empty, CheckpointError, ("no checkpoint",), (str(tmp / "empty"),)),
    ]


CHECKPOINT_IDS = ["checkpoint dir is a file", "checkpoint of other shapes", "checkpoint of another config",
                  "no checkpoint"]


@pytest.mark.parametrize("case_id", CHECKPOINT_IDS)
def test_checkpoint_bad_input(tmp_path, case_id):
    (case,) = [c for c in checkpoint_cases(tmp_path) if c.id == case_id]
    check_case(case)


# ============================================================================================ 5. data and specs
def data_cases(files, tmp: Path) -> list[Case]:
    def npz(name, **arrays):
        p = tmp / f"{name}.npz"
        np.savez(p, **arrays)
        return lambda: data.load(f"npz:{p}")

    x = np.zeros((10, 8, 8, 3), np.uint8)
    y = np.arange(10) % 3
    mn_trunc = _copy(files["mnist"], tmp / "mn_trunc")
    gz = mn_trunc / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes())[:-100]))
    mn_magic = _copy(files["mnist"], tmp / "mn_magic")
    (mn_magic / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(9)))
    mn_gz = _copy(files["mnist"], tmp / "mn_gz")
    _truncate(mn_gz / "train-images-idx3-ubyte.gz", 0.5)
    mn_missing = _copy(files["mnist"], tmp / "mn_missing")
    (mn_missing / "train-labels-idx1-ubyte.gz").unlink()
    cf = _copy(files["cifar"], tmp / "cifar_trunc")
    _truncate(cf / "data_batch_3", 0.5)
    cf_shape = _copy(files["cifar"], tmp / "cifar_shape")
    (cf_shape / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    fo = _copy(files["folder"], tmp / "folder_bad")
    (fo / "dog" / "2.png").write_bytes((fo / "dog" / "2.png").read_bytes()[:40])
    fo_empty = tmp / "folder_empty"
    fo_empty.mkdir()
    mk = lambda **kw: (lambda: data.Dataset(**{"images": x, "labels": y, "num_classes": 3,
                                               "class_names": ("a", "b", "c"), **kw}))
    ds = data.Dataset(images=x, labels=y, num_classes=3, class_names=("a", "b", "c"),
                      masks={"part": np.zeros((10, 8, 8), np.uint8)})
    return [
        Case("npz truncated", lambda: data.load(f"npz:{_truncate(_copy(files['npz'], tmp / 't.npz'), 0.6)}"),
             DataError, ("corrupt or truncated",), ("re-create or re-download",)),
        Case("npz wrong keys", npz("keys", images=x, labels=y), DataError, ("found ['images', 'labels']",),
             ("train_x/train_y/test_x/test_y or x/y",)),
        Case("npz float images", npz("flt", x=x.astype(np.float32), y=y), ShapeError, ("float32",), ("uint8",)),
        Case("npz no images", npz("empty", x=x[:0], y=y[:0]), DataError, ("dataset is empty",),
             ("check the path, split",)),
        Case("npz negative labels", npz("neg", x=x, y=y - 1), DataError, ("found range [-1, 1]",),
             ("labels must lie in [0,",)),
        Case("npz label count", npz("cnt", x=x, y=np.concatenate([y, y])), DataError,
             ("x holds 10 images but y 20 labels",), ("one label per image",)),
        Case("npz split label count", npz("cnt2", train_x=x, train_y=y[:4], test_x=x, test_y=y), ShapeError,
             ("labels must have shape (10,)",), ("to match 10 images",)),
        Case("npz flat images", npz("flat", x=x.reshape(10, -1), y=y), ShapeError, ("(n, h, w, c)",), ("c in",)),
        Case("npz float labels", npz("fl", x=x, y=y + 0.5), ShapeError, ("labels must be integers", "float64"),
             (".astype(np.int32)",)),
        Case("npz missing", lambda: data.load(f"npz:{tmp / 'nope.npz'}"), MissingFileError, ("does not exist",),
             ("put an .npz file",)),
        Case("idx truncated", lambda: data.load(f"mnist:{mn_trunc}"), DataError, ("truncated or corrupt idx",),
             ("download it again",)),
        Case("idx bad magic", lambda: data.load(f"mnist:{mn_magic}"), DataError, ("not an idx file",),
             ("original mnist-format idx files",)),
        Case("idx gzip truncated", lambda: data.load(f"mnist:{mn_gz}"), DataError, ("corrupt or truncated",),
             ("download it again",)),
        Case("idx file missing", lambda: data.load(f"mnist:{mn_missing}"), MissingFileError,
             ("lacks train-labels-idx1-ubyte.gz",), ("put the mnist idx files there",)),
        Case("cifar truncated", lambda: data.load(f"cifar10:{cf}"), DataError, ("corrupt or truncated cifar",),
             ("download it again",)),
        Case("cifar wrong shape", lambda: data.load(f"cifar10:{cf_shape}", "test"), DataError, ("(2, 100)",),
             ("uint8 (n, 3072)",)),
        Case("folder corrupt png", lambda: data.load(f"folder:{fo}", "all"), DataError, ("cannot decode image",),
             ("corrupt or truncated",)),
        Case("folder without classes", lambda: data.load(f"folder:{fo_empty}"), DataError,
             ("no class subfolders",), ("<class name>",)),
        Case("labels out of range", mk(labels=y + 1), DataError, ("found range [1, 3]",), ("[0, 3)",)),
        Case("too few class names", mk(class_names=("a", "b")), DataError, ("2 class_names for num_classes=3",),
             ("one name per class",)),
        Case("five channels", mk(images=np.zeros((10, 8, 8, 5), np.uint8)), ShapeError, ("(10, 8, 8, 5)",),
             ("c in {1, 3}",)),
        Case("float images", mk(images=x.astype(np.float32)), ShapeError, ("must be uint8",), ("np.clip(x * 255",)),
        Case("mask of wrong shape", mk(masks={"part": np.zeros((10, 4, 4), np.uint8)}), ShapeError,
             ("mask 'part' has shape (10, 4, 4)",), ("need (10, 8, 8)",)),
        Case("float mask", mk(masks={"part": np.zeros((10, 8, 8), np.float32)}), ShapeError, ("float32",),
             ("integer label map",)),
        Case("image labels wrong length", mk(image_labels={"texture": np.zeros(3, int)}), ShapeError,
             ("image_labels['texture'] has shape (3,)",), ("expected (10,)",)),
        Case("landmarks without visibility", mk(landmarks=np.zeros((10, 2, 2))), ShapeError,
             ("landmarks and landmark_visible",), ("given together",)),
        Case("take out of range", lambda: ds.take([0, 99]), ShapeError, ("indices must lie in [0, 10)",),
             ("take()",)),
        Case("iterator mask not in data", lambda: data.BatchIterator(ds, 4, masks=("color",)), ConfigError,
             ("'color' is not in dataset",), ("it has ['part']",)),
        Case("iterator batch 0", lambda: data.BatchIterator(ds, 0), ConfigError, ("batch_size must be >= 1",),
             ("got 0",)),
        Case("iterator batch > data", lambda: data.BatchIterator(ds, 11, drop_remainder=True), ConfigError,
             ("11 > 10 examples",), ("drop_remainder",)),
        Case("iterator position outside", lambda: data.BatchIterator(ds, 4, position={"epoch": 0, "step": 9}),
             ConfigError, ("outside the data",), ("steps per epoch",)),
        Case("unknown spec kind", lambda: data.load("imagenet:/x"), ConfigError, ("unknown data spec",),
             ("must be one of", "synthparts")),
        Case("spec without path", lambda: data.load("cifar10:"), ConfigError, ("needs a path",), ("cifar10:path",)),
        Case("unknown split", lambda: data.load("synthparts", "dev"), ConfigError, ("unknown split 'dev'",),
             ("'train', 'test' or 'all'",)),
        Case("synthparts size text", lambda: data.load("synthparts:size=abc", n=2), ConfigError,
             ("size must be an integer", "'abc'"), ("synthparts:size=64",)),
        Case("synthparts seed float", lambda: data.load("synthparts:seed=1.5", n=2), ConfigError,
             ("seed must be an integer",), ("seed=0",)),
        Case("synthparts option typo", lambda: data.load("synthparts:noize=3", n=2), ConfigError,
             ("unknown synthparts option(s) ['noize']",), ("valid:", "noise")),
        Case("synthparts option type", lambda: data.load("synthparts:scale=big", n=2), ConfigError,
             ("['scale'] have the wrong type",), ("scale=(0.28, 0.42)",)),
        Case("synthparts size out of range", lambda: data.load("synthparts:size=8", n=2), ConfigError,
             ("size must lie in [32, 224]",), ("size=8",)),
        Case("synthparts empty split", lambda: data.load("synthparts:n_train=0"), DataError,
             ("would be empty",), ("n_train >= 1",)),
        Case("synthparts no key=value", lambda: data.load("synthparts:64", n=2), ConfigError,
             ("'64' must be key=value",), ("key=value",)),
        Case("synthparts bad preset", lambda: data.load("synthparts:preset=extreme", n=2), ConfigError,
             ("'extreme' unknown",), ("easy, default, hard, rigid or articulated",)),
    ]


DATA_IDS = ["npz truncated", "npz wrong keys", "npz float images", "npz no images", "npz negative labels",
            "npz label count", "npz split label count",
            "npz flat images", "npz float labels", "npz missing", "idx truncated",
            "idx bad magic", "idx gzip truncated", "idx file missing", "cifar truncated", "cifar wrong shape",
            "folder corrupt png", "folder without classes", "labels out of range", "too few class names",
            "five channels", "float images", "mask of wrong shape", "float mask", "image labels wrong length",
            "landmarks without visibility", "take out of range", "iterator mask not in data", "iterator batch 0",
            "iterator batch > data", "iterator position outside", "unknown spec kind", "spec without path",
            "unknown split", "synthparts size text", "synthparts seed float", "synthparts option typo",
            "synthparts option type", "synthparts size out of range", "synthparts empty split",
            "synthparts no key=value", "synthparts bad preset"]


@pytest.fixture(scope="module")
def data_table(files, tmp_path_factory):
    return {c.id: c for c in data_cases(files, tmp_path_factory.mktemp("data"))}


@pytest.mark.parametrize("case_id", DATA_IDS)
def test_data_bad_input(data_table, case_id):
    check_case(data_table[case_id])


def test_data_case_table_is_complete(data_table):
    assert list(data_table) == DATA_IDS


@pytest.fixture(scope="module")
def spec_cwd(tmp_path_factory):
    d = tmp_path_factory.mktemp("cwd") / "a" / "b"
    d.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        yield d


SPEC_KINDS = ["synthparts", "npz", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder", "broden", "imagenet",
              "SYNTHPARTS", "", "file"]
SP_KEYS = ["size", "n_train", "n_test", "seed", "preset", "noise", "scale", "clutter", "num_categories", "bogus"]
SP_VALUES = st.one_of(st.integers(-3, 300).map(str), st.floats(-2, 300, allow_nan=False).map(repr),
                      st.sampled_from(["abc", "None", "[1]", "(0.3,0.4)", "True", "", "nan", "easy", "hard"]))


@HYP
@given(kind=st.sampled_from(SPEC_KINDS),
       opts=st.lists(st.tuples(st.sampled_from(SP_KEYS), SP_VALUES), max_size=3),
       junk=st.text(alphabet="abc:=,.-_ ", max_size=10))
def test_any_data_spec_loads_or_raises_a_jinterp_error(spec_cwd, kind, opts, junk):
    """Property: load(spec) either returns a valid Dataset or raises a JinterpError -- for any spec text
    (relative paths resolve in an empty directory)."""
    arg = ",".join(f"{k}={v}" for k, v in opts) if kind.lower() == "synthparts" else junk
    spec = f"{kind}:{arg}" if arg or kind == "file" else kind
    try:
        ds = data.load(spec, "test", **({"n": 2} if kind.lower() == "synthparts" else {}))
    except JinterpError as e:
        assert str(e).strip()
        return
    assert len(ds) == 2 and ds.images.dtype == np.uint8


def test_labels_beyond_num_classes_in_training_are_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--data", "synthparts:size=32,n_train=16,n_test=8", "--set", "num_classes=3",
                           "--set", "batch_size=8")
    assert_one_line_error(code, err, "labels go up to 5 but num_classes is 3", "set num_classes >= 6")


def test_training_set_smaller_than_a_batch_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--data", "synthparts:size=32,n_train=4,n_test=4")
    assert_one_line_error(code, err, "4 training examples < batch_size 64", "smaller --set batch_size")


def test_workdir_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "w").write_text("not a directory")
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                           "--data", "synthparts:size=32,n_train=16,n_test=8", "--set", "batch_size=8")
    assert_one_line_error(code, err, "is a file", "pass a directory")
    assert (tmp_path / "w").read_text() == "not a directory"


# ========================================================================================== 6. dissection input
def _dis_fixture(n=6, h=4, w=4, u=3, H=8, W=8):
    rng = np.random.default_rng(0)
    acts = rng.random((n, h, w, u)).astype(np.float32)
    obj = rng.integers(0, 3, (n, H, W))
    tex = rng.integers(0, 3, (n,))
    names = {"object": ["a", "b"], "texture": ["s", "t"]}
    return acts, obj, tex, names


def dissection_cases() -> list[Case]:
    acts, obj, tex, names = _dis_fixture()
    n, h, w, u = acts.shape
    cs = dis.concepts_from_label_maps({"object": obj}, {"texture": tex}, names)
    stream = lambda a, b=3: [a[i:i + b] for i in range(0, len(a), b)]
    th = dis.quantile_thresholds(stream(acts), n * h * w)
    nan = acts.copy()
    nan[4, 1, 2, 0] = np.nan
    inf = acts.copy()
    inf[0, 0, 0, 2] = -np.inf
    flat_cs = dataclasses.replace(cs, pixel_labels=cs.pixel_labels[:, 0])
    cs_other = dis.concepts_from_label_maps({"object": obj, "part": obj}, {"texture": tex},
                                            {"object": ["a", "b"], "part": ["p", "q"], "texture": ["s", "t"]})
    ds = data.Dataset(images=np.zeros((n, 8, 8, 3), np.uint8), labels=np.zeros(n, int), num_classes=1,
                      class_names=("x",), masks={"object": obj.astype(np.uint8)}, concepts={"object": ("-", "a", "b")})
    cfm = dis.concepts_from_label_maps
    return [
        Case("mask without pixel axes", lambda: cfm({"object": obj[:, 0]}, {}, names), ShapeError,
             ("'object' have shape (6, 8)",), ("(n, h, w) per-pixel",)),
        Case("mask with a channel axis", lambda: cfm({"object": obj[..., None]}, {}, names), ShapeError,
             ("(6, 8, 8, 1)",), ("(n, h, w)",)),
        Case("image labels as maps", lambda: cfm({"object": obj}, {"texture": obj}, names), ShapeError,
             ("'texture' have shape (6, 8, 8)",), ("(n,) image-level",)),
        Case("masks of two sizes", lambda: cfm({"object": obj, "part": obj[:, :4, :4]}, {},
                                               {"object": ["a", "b"], "part": ["p", "q"]}), ShapeError,
             ("different shapes",), ("resize them to one (h, w)",)),
        Case("masks for other images", lambda: cfm({"object": obj}, {"texture": tex[:2]}, names), ShapeError,
             ("cover 2 images, others cover 6",), ("one label map per image",)),
        Case("float mask", lambda: cfm({"object": obj + 0.5}, {}, names), ShapeError, ("must be integers",),
             ("round and cast",)),
        Case("label beyond concepts", lambda: cfm({"object": obj + 1}, {}, names), DataError,
             ("range over [1, 3]", "2 concepts"), ("0 = none or 1..2",)),
        Case("concepts without names", lambda: cfm({"object": obj}, {"texture": tex}, {"object": ["a", "b"]}),
             DataError, ("no concept names for category ['texture']",), ("give names[category]",)),
        Case("no pixel categories", lambda: cfm({}, {"texture": tex}, names), DataError,
             ("no pixel-level concept labels",), ("at least one label-map",)),
        Case("dataset lacks category", lambda: dis.concepts_from_dataset(ds, ["part"]), DataError,
             ("no annotation category ['part']",), ("it has ['object']",)),
        Case("resize to zero", lambda: dis.concepts_from_dataset(ds, size=(0, 0)), ShapeError, ("(0, 0)",),
             ("positive (h, w)",)),
        Case("hand-built concept set of wrong shape", lambda: dis.tally(stream(acts), flat_cs, th, 3), ShapeError,
             ("(6, 8, 8)",), ("concepts_from_label_maps",)),
        Case("NaN activations (thresholds)", lambda: dis.quantile_thresholds(stream(nan), n * h * w), ShapeError,
             ("nan or inf",), ("check the images", "weights")),
        Case("Inf activations (tally)", lambda: dis.tally(stream(inf), cs, th, 3), ShapeError, ("nan or inf",),
             ("preprocessing",)),
        Case("flat activations", lambda: dis.tally([a.mean((1, 2)) for a in stream(acts)], cs, th, 3), ShapeError,
             ("spatial activations (b, h, w, u)",), ("(3, 3)",)),
        Case("activations for more images", lambda: dis.tally(stream(np.concatenate([acts, acts])), cs, th, 3),
             ShapeError, ("more images than the concept labels",), ("matching data",)),
        Case("activations for fewer images", lambda: dis.tally(stream(acts[:4]), cs, th, 3), ShapeError,
             ("cover 4 images but the concept labels 6",), ("matching data",)),
        Case("thresholds of another layer", lambda: dis.tally(stream(acts[..., :2]), cs, th, 3), ShapeError,
             ("2 units but thresholds 3",), ("on the same layer",)),
        Case("units change mid-stream", lambda: dis.quantile_thresholds([acts[:3], acts[3:, ..., :2]], n * h * w),
             ShapeError, ("3 then 2",), ("one layer of one model",)),
        Case("quantile out of range", lambda: dis.quantile_thresholds(stream(acts), n * h * w, 1.5), ConfigError,
             ("quantile must lie in (0, 1)",), ("0.005",)),
        Case("wrong position count", lambda: dis.quantile_thresholds(stream(acts), n * h), DataError,
             ("total_positions=24",), ("n·h·w",)),
        Case("empty activation stream", lambda: dis.quantile_thresholds(iter([]), 10), DataError,
             ("no activations",), ("at least one batch",)),
        Case("dissect of an empty stream", lambda: dis.dissect(lambda: iter([]), cs, 3), DataError,
             ("no activations",), ("at least one batch",)),
        Case("batch larger than batch_size", lambda: dis.tally([acts], cs, th, 3), ShapeError,
             ("batch of 6 exceeds batch_size=3",), ("at most batch_size",)),
        Case("too many concepts per image", lambda: dis.tally(stream(acts), cs, th, 3, max_labels=1), DataError,
             ("distinct concepts but max_labels=1",), ("raise max_labels",)),
        Case("iou with another concept set", lambda: dis.iou(dis.tally(stream(acts), cs, th, 3), cs_other),
             ShapeError, ("concept set has 6 in 3",), ("the tally was made with",)),
        Case("s1_s2 of two shapes", lambda: dis.s1_s2(np.zeros((3, 4)), np.zeros((3, 5))), ShapeError,
             ("differ in shape",), ("(3, 5)",)),
        Case("s1_s2 with NaN", lambda: dis.s1_s2(np.full((3, 4), np.nan), np.zeros((3, 4))), ShapeError,
             ("nan/inf",), ("compute them with iou()",)),
        Case("label_units with NaN", lambda: dis.label_units(np.full((3, 4), np.nan)), ShapeError, ("nan/inf",),
             ("compute it with iou()",)),
    ]


DISSECTION_IDS = ["mask without pixel axes", "mask with a channel axis", "image labels as maps", "masks of two sizes",
                  "masks for other images", "float mask", "label beyond concepts", "concepts without names",
                  "no pixel categories", "dataset lacks category", "resize to zero",
                  "hand-built concept set of wrong shape", "NaN activations (thresholds)", "Inf activations (tally)",
                  "flat activations", "activations for more images", "activations for fewer images",
                  "thresholds of another layer", "units change mid-stream", "quantile out of range",
                  "wrong position count", "empty activation stream", "dissect of an empty stream",
                  "batch larger than batch_size", "too many concepts per image", "iou with another concept set",
                  "s1_s2 of two shapes", "s1_s2 with NaN", "label_units with NaN"]


@pytest.fixture(scope="module")
def dissection_table():
    return {c.id: c for c in dissection_cases()}


@pytest.mark.parametrize("case_id", DISSECTION_IDS)
def test_dissection_bad_input(dissection_table, case_id):
    check_case(dissection_table[case_id])


def test_dissection_case_table_is_complete(dissection_table):
    assert list(dissection_table) == DISSECTION_IDS


@HYP
@given(pshape=st.lists(st.integers(1, 5), min_size=1, max_size=4), ishape=st.lists(st.integers(1, 6), max_size=2),
       lo=st.integers(-2, 0), hi=st.integers(0, 4), dtype=st.sampled_from(["int32", "uint8", "float32", "int64"]))
def test_any_concept_label_shape_is_accepted_only_when_valid(pshape, ishape, lo, hi, dtype):
    """Property: concepts_from_label_maps accepts exactly (N, H, W) int maps with labels in [0, k], (N,) image
    labels for the same N; everything else is a ShapeError/DataError, never a wrong ConceptSet."""
    rng = np.random.default_rng(len(pshape) * 7 + hi)
    pix = rng.integers(lo, hi + 1, pshape).astype(dtype)
    img = rng.integers(0, 2, ishape).astype("int32")
    names = {"object": ["a", "b"], "texture": ["s", "t"]}
    valid = (len(pshape) == 3 and len(ishape) == 1 and ishape[0] == pshape[0] and dtype != "float32"
             and pix.min() >= 0 and pix.max() <= 2)
    try:
        cs = dis.concepts_from_label_maps({"object": pix}, {"texture": img}, names)
    except (ShapeError, DataError):
        assert not valid
        return
    assert valid
    assert cs.pixel_labels.shape == (pshape[0], 1, pshape[1], pshape[2])
    np.testing.assert_array_equal(cs.pixel_labels[:, 0] > 0, pix > 0)


# ============================================================================================== the count
def test_case_count_is_stated():
    """Keeps the number quoted in the issue note honest: the parametrized bad-input cases of this module."""
    n = (len(SET_CASES) + len(METHOD_CASES) + len(FEATURE_IDS) + len(WEIGHT_IDS) + len(CKPT_CASES)
         + len(CHECKPOINT_IDS) + len(DATA_IDS) + len(DISSECTION_IDS))
    assert n == 172, n


# ================================================== 6. the run skeleton: workdirs, stale stages, mismatches
# Issue #17: each case failed on the code before the run skeleton (a traceback, a silent reuse, a silent result).
COMMANDS = ("train-backbone", "cladec", "csg", "basis", "graph", "explainer", "demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_workdir_is_refused_by_every_command(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, command, "--config", "tiny", "--workdir", "")
    assert_one_line_error(code, err, "--workdir is empty", "--workdir runs/x")
    assert not any(tmp_path.iterdir())  # nothing written into the current directory


def test_second_process_in_a_workdir_is_refused(capsys, tmp_path):
    """Two runs in one workdir at once: the second gets one line naming the lock and the pid holding it."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time; from jinterp.core.run import Run; from jinterp.core.config import "
            "TrainBackboneConfig as T\nwith Run(sys.argv[1], T.tiny(), method='x'):\n    print('held', flush=True)"
            "\n    time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in ("train-backbone", "cladec"):
            code_, _, err = run_cli(capsys, command, "--config", "tiny", "--workdir", str(tmp_path))
            assert_one_line_error(code_, err, "in use by another jinterp process", f"pid {holder.pid}",
                                  ".jinterp.lock", "another --workdir")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def _small_weights(path: Path, *, num_classes: int = 6, image_shape=(32, 32, 3), widths=(4, 8, 8, 8)) -> Path:
    model = backbones.create("convnet", num_classes, widths=widths)
    return torch_import.save_variables(path, backbones.init(model, jax.random.key(0), image_shape),
                                       {"arch": "convnet", "num_classes": num_classes, "widths": list(widths),
                                        "image_shape": list(image_shape)})


CLADEC_SMALL = ["image_size=32", "train_size=64", "test_size=32", "batch_size=32", "epochs=1", "alphas=0",
                "layers=relu3", "retrain_epochs=0", "grid_rows=2", "eval_batch_size=32", "base_width=8"]


@pytest.mark.slow
def test_cladec_new_config_in_an_old_workdir_recomputes_and_never_mislabels(tmp_path):
    """Defect 1: `--set lr=... --set seed=...` in the workdir of another run used to reuse the RefAE and decoders
    (only alphas were compared) and label the old numbers with the new config."""
    from jinterp.methods.cladec import ClaDecConfig
    from jinterp.methods.cladec import run as cladec_run

    weights = _small_weights(tmp_path / "w.npz")
    work = tmp_path / "run"
    base = C.apply_overrides(ClaDecConfig.tiny(), [*CLADEC_SMALL, f"weights={weights}"])
    first = cladec_run(base, work, progress=False).to_json()
    other = C.apply_overrides(base, ["lr=0.0001", "seed=5"])
    second = cladec_run(other, work, progress=False).to_json()
    layer = second["layers"]["relu3"]
    assert not layer["cladec_train"].get("loaded") and not layer["refae_train"].get("loaded")
    assert second["config"]["lr"] == 0.0001 and second["config"]["seed"] == 5
    saved = json.loads((work / "results.json").read_text())
    assert saved["config"]["lr"] == 0.0001
    mse = lambda res: res["layers"]["relu3"]["sources"]["cladec@0"]["mse"]  # noqa: E731
    assert mse(saved) == mse(second) != mse(first)
    record = json.loads((work / "config.json").read_text())
    assert record["config"]["lr"] == 0.0001
    assert record["stages"]["cladec:relu3"]["fields"]["lr"] == 0.0001
    assert record["stages"]["cladec:relu3"]["status"] == "done"
    # The same settings again: every stage reused.
    third = cladec_run(other, work, progress=False).to_json()
    assert third["layers"]["relu3"]["cladec_train"].get("loaded") and mse(third) == mse(second)
    # --config <workdir>/config.json reruns that run exactly (its weights, lr and seed): nothing is retrained.
    assert cli.main(["cladec", "--quiet", "--config", str(work / "config.json"), "--workdir", str(work)]) == 0
    fourth = json.loads((work / "results.json").read_text())
    assert fourth["layers"]["relu3"]["cladec_train"].get("loaded") and fourth["config"] == second["config"]


def test_cladec_backbone_of_another_seed_is_refused_not_reused(tmp_path, monkeypatch):
    """Defect 1: the backbone trained in the workdir for seed 0 must not serve a seed-5 run; its training stage is
    refused with the differing field and both ways out (nothing is trained here: the training is stubbed)."""
    from jinterp.core import train_backbone as tb
    from jinterp.methods.cladec import ClaDecConfig
    from jinterp.methods.cladec import run as cladec_run

    def killed_training(cfg, workdir, **kw):
        (Path(workdir) / "checkpoints" / "4").mkdir(parents=True)
        raise KeyboardInterrupt  # as if killed mid-training

    monkeypatch.setattr(tb, "train_backbone", killed_training)
    cfg = C.apply_overrides(ClaDecConfig.tiny(), CLADEC_SMALL)
    with pytest.raises(KeyboardInterrupt):
        cladec_run(cfg, tmp_path, progress=False)
    err = check_case(Case("cladec-seed", lambda: cladec_run(C.apply_overrides(cfg, ["seed=5"]), tmp_path,
                                                             progress=False),
                          CheckpointError, ("stage 'backbone'", "seed: saved 0 vs now 5"), ("--workdir", "--restart")))
    assert "backbone" in str(err)
    assert (tmp_path / "backbone" / "checkpoints" / "4").is_dir()  # left untouched


def test_interrupt_before_any_checkpoint_does_not_promise_a_resume(capsys, tmp_path, monkeypatch):
    from jinterp.core import train_backbone as tb

    def interrupted(cfg, workdir, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(tb, "train_backbone", interrupted)
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path))
    assert code == 130 and "before the first checkpoint" in err and "resume from" not in err
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train-backbone", "--config", "tiny", "--workdir", str(tmp_path))
    assert code == 130 and "resume from the last checkpoint" in err


def test_corrupt_checkpoint_advice_deletes_only_the_bad_step(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "core"))
    import coretoy

    from jinterp.core import loop

    _, state, step, it = coretoy.setup(steps=4)
    with Checkpointer(tmp_path / "checkpoints", keep=5, config={"steps": 4}) as ck:
        loop.train_loop(state, train_step=step, train_iter=it, num_steps=4, workdir=tmp_path, checkpointer=ck,
                        ckpt_every=2, progress=False)
    for f in (tmp_path / "checkpoints" / "4").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    _, fresh, _, _ = coretoy.setup(steps=4)
    with Checkpointer(tmp_path / "checkpoints", keep=5, config={"steps": 4}) as ck:
        err = check_case(Case("corrupt-step", lambda: ck.restore(fresh), CheckpointError,
                              ("checkpoints/4", "corrupt"), ("delete just that step directory", "from step 2")))
    assert f"delete {tmp_path / 'checkpoints'} " not in str(err)


# ----- mismatches checked where the information exists (defect 4, the programs' side)
def test_explainer_target_at_or_below_the_input_layer_is_refused(tmp_path):
    from jinterp.methods.explainer import ExplainerConfig
    from jinterp.methods.explainer import run as explainer_run

    for layer, target, words in (("relu3", "relu3", "the same layer as"), ("relu4", "relu2", "below")):
        cfg = C.apply_overrides(ExplainerConfig.tiny(), [f"layer={layer}", f"target={target}"])
        check_case(Case(f"explainer-{layer}-{target}", lambda cfg=cfg: explainer_run(cfg, tmp_path / "w"),
                        ConfigError, (f"target {target!r}", words), ("higher layer", "--target")))
    assert not (tmp_path / "w").exists()


def test_graph_layers_in_inverted_order_are_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "graph", "--config", "tiny", "--layers", "bn4,bn3", "--workdir",
                           str(tmp_path / "w"))
    assert_one_line_error(code, err, "bottom to top", "bn4,bn3", "--layers bn3,bn4")
    assert not (tmp_path / "w").exists()


def test_weights_for_another_class_count_are_refused_naming_both(tmp_path):
    from jinterp.methods.explainer import ExplainerConfig
    from jinterp.methods.explainer import run as explainer_run

    weights = _small_weights(tmp_path / "w10.npz", num_classes=10, image_shape=(32, 32, 3))
    cfg = C.apply_overrides(ExplainerConfig.tiny(), [f"weights={weights}", "image_size=32", "train_size=64",
                                                    "test_size=32"])
    check_case(Case("explainer-10-vs-6", lambda: explainer_run(cfg, tmp_path / "w", progress=False), WeightsError,
                    ("10 classes", "has 6"), ("weights trained on this data",)))


def test_cladec_at_another_image_size_than_the_weights_is_refused(tmp_path):
    """ClaDec at 32 px with 64-px weights used to run (accuracy 0.964 -> 0.690) though the file stores its shape."""
    from jinterp.methods.cladec import ClaDecConfig
    from jinterp.methods.cladec import run as cladec_run

    weights = _small_weights(tmp_path / "w64.npz", image_shape=(64, 64, 3))
    cfg = C.apply_overrides(ClaDecConfig.tiny(), [*CLADEC_SMALL, f"weights={weights}"])
    check_case(Case("cladec-32-vs-64", lambda: cladec_run(cfg, tmp_path / "w", progress=False), WeightsError,
                    ("64x64", "32x32"), ("--set image_size=64",)))
    assert not (tmp_path / "w" / "layers").exists()


def test_demo_with_grayscale_data_and_rgb_weights_is_one_line(capsys, tmp_path):
    """Defect 3: used to end in a Flax ScopeParamShapeError traceback."""
    rng = np.random.default_rng(0)
    gray = tmp_path / "gray.npz"
    np.savez(gray, train_x=rng.integers(0, 256, (48, 32, 32, 1), dtype=np.uint8), train_y=np.arange(48) % 6,
             test_x=rng.integers(0, 256, (24, 32, 32, 1), dtype=np.uint8), test_y=np.arange(24) % 6)
    weights = _small_weights(tmp_path / "rgb.npz")
    code, _, err = run_cli(capsys, "demo", "--quick", "--data", f"npz:{gray}", "--weights", str(weights),
                           "--workdir", str(tmp_path / "w"))
    lines = [x.split("jinterp: error: ", 1)[1] for x in err.splitlines() if "jinterp: error: " in x]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err  # (the rest: the demo's progress bar)
    for w in ("3-channel", "1 channel", "rgb.npz"):
        assert w in lines[0], lines[0]


@pytest.mark.slow
def test_graph_with_fewer_usable_images_warns_and_names_the_metrics_it_skipped(tmp_path, capsys):
    """The graph on CIFAR used 13 of 150 requested images and dropped its metrics without a word."""
    from jinterp.methods.graph import GraphConfig
    from jinterp.methods.graph import run as graph_run

    rng = np.random.default_rng(0)
    npz = tmp_path / "small.npz"
    np.savez(npz, train_x=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), train_y=np.arange(60) % 6,
             test_x=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), test_y=np.arange(60) % 6)
    weights = _small_weights(tmp_path / "w.npz")
    cfg = dataclasses.replace(GraphConfig.tiny(), data=f"npz:{npz}", weights=str(weights), image_size=32,
                              num_images=150, num_negatives=30, iterations=1, stability_units=20)
    res = graph_run(cfg, tmp_path / "w", progress=False).to_json()
    err = capsys.readouterr().err
    assert "jinterp: warning: graph: 10 usable images instead of the 150 requested" in err
    assert "only 10 test images of category" in err
    assert res["num_images"] == 10 and "metrics" not in res
    skipped = json.loads((tmp_path / "w" / "results.json").read_text())["metrics_not_computed"]
    assert "instability_graph_nodes" in skipped["metrics"] and "no part landmarks" in skipped["reason"]
    assert "metrics not computed" in err


@pytest.mark.parametrize("kw, field, expected", [
    ({"num_directions": "8"}, "num_directions", "int"), ({"lr": "0.001"}, "lr", "float"),
    ({"init": 3}, "init", "str"), ({"epochs": 2.5}, "epochs", "int"),
])
def test_uibe_config_built_with_a_wrong_type_is_one_line(kw, field, expected):
    """UIBEConfig used to accept any type on its own (only BasisConfig checked it, later, with another name)."""
    from jinterp.methods.basis.uibe import UIBEConfig

    err = check_case(Case(f"uibe-{field}", lambda: UIBEConfig(**kw), ConfigError,
                          (f"UIBEConfig.{field}", f"expected {expected}", repr(kw[field])), ()))
    assert "\n" not in str(err)
    with pytest.raises(ConfigError, match=rf"UIBEConfig\.{field}: expected {expected}"):
        dataclasses.replace(UIBEConfig.tiny(), **kw)


@pytest.mark.parametrize("kw, field, expected", [
    ({"batch_size": "128"}, "batch_size", "int"), ({"lr": "0.01"}, "lr", "float"),
    ({"categories": "object"}, "categories", "tuple"), ({"loss": 1}, "loss", "str"),
])
def test_ibd_config_built_with_a_wrong_type_is_one_line(kw, field, expected):
    from jinterp.methods.basis.ibd import IBDConfig

    err = check_case(Case(f"ibd-{field}", lambda: IBDConfig(**kw), ConfigError,
                          (f"IBDConfig.{field}", f"expected {expected}", repr(kw[field])), ()))
    assert "\n" not in str(err)
    with pytest.raises(ConfigError, match=rf"IBDConfig\.{field}: expected {expected}"):
        dataclasses.replace(IBDConfig.tiny(), **kw)


# ------------------------------------------------------------------------------------ a user's own model (--model)
_OWN_NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        x = self.relu(self.conv(x))
        {branch}
        x = self.relu2(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net({channels})
'''
_OWN_DATA = "synthparts:size=32,n_train=32,n_test=16"


def _own_model(folder: Path, *, branch: str = "", channels: int = 3) -> tuple[Path, object]:
    src = _OWN_NET.replace("{branch}", branch or "pass").replace("{channels}", str(channels))
    file = folder / f"net_{abs(hash(src)) % 10**8}.py"
    file.write_text(src)
    scope: dict = {}
    exec(compile(src, str(file), "exec"), scope)  # noqa: S102 - the test's own source
    return file, scope["build"]()


def _explainer_on(capsys, tmp_path, *argv: str) -> tuple[int, str]:
    code, _, err = run_cli(capsys, "explainer", "--config", "tiny", "--data", _OWN_DATA, "--quiet",
                           "--layer", "relu", "--target", "relu2", "--workdir", str(tmp_path / "w"), *argv)
    return code, err


def test_own_model_untraceable_is_one_line(capsys, tmp_path, torch):
    file, _ = _own_model(tmp_path, branch="if x.sum() > 0:\n            x = x * 2")
    code, err = _explainer_on(capsys, tmp_path, "--model", f"{file}:build")
    assert_one_line_error(code, err, "cannot trace", "control flow", "torch.where")


def test_own_model_state_dict_with_missing_and_unexpected_keys_is_one_line(capsys, tmp_path, torch):
    file, net = _own_model(tmp_path)
    sd = net.state_dict()
    sd["fc.weights"] = sd.pop("fc.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    code, err = _explainer_on(capsys, tmp_path, "--model", f"{file}:build", "--weights", str(tmp_path / "renamed.pth"))
    assert_one_line_error(code, err, "missing keys (1): fc.weight (found fc.weights?)", "unexpected keys (1)",
                          "torch.save(model.state_dict()")


def test_own_model_for_other_input_channels_is_one_line(capsys, tmp_path, torch):
    file, _ = _own_model(tmp_path, channels=1)
    code, err = _explainer_on(capsys, tmp_path, "--model", f"{file}:build")
    assert_one_line_error(code, err, "expects 1 input channels, got 3", "give 1-channel images")


def test_own_model_unknown_layer_names_the_nearest_and_the_valid_ones(capsys, tmp_path, torch):
    file, net = _own_model(tmp_path)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    code, err = _explainer_on(capsys, tmp_path, "--model", f"{file}:build", "--weights", str(tmp_path / "net.pth"),
                              "--target", "relu3")
    assert_one_line_error(code, err, "unknown layer 'relu3'", "did you mean 'relu'", "valid layers: conv, relu")


def test_own_model_csg_needs_the_gate_layer_and_head_named(capsys, tmp_path, torch):
    file, _ = _own_model(tmp_path)
    code, _, err = run_cli(capsys, "csg", "--config", "tiny", "--data", _OWN_DATA, "--quiet", "--model",
                           f"{file}:build", "--workdir", str(tmp_path / "w"), "--set", "gate_layer=relu2",
                           "--set", "head=conv")
    assert_one_line_error(code, err, "head 'conv' is not after the gate layer 'relu2'", "--set head=")


def test_own_model_demo_needs_two_layers_named(capsys, tmp_path, torch):
    file, _ = _own_model(tmp_path)
    code, _, err = run_cli(capsys, "demo", "--quick", "--model", f"{file}:build", "--layers", "relu",
                           "--workdir", str(tmp_path / "w"))
    assert_one_line_error(code, err, "give --layers LOW,HIGH", "two module paths")


def test_saved_own_model_with_weights_is_refused(capsys, tmp_path, torch):
    from jinterp.models import from_torch, save_model

    _, net = _own_model(tmp_path)
    model, variables = from_torch(net, torch.zeros(1, 3, 32, 32))
    saved = save_model(tmp_path / "net.npz", model, variables)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    code, err = _explainer_on(capsys, tmp_path, "--model", str(saved), "--weights", str(tmp_path / "net.pth"))
    assert_one_line_error(code, err, "carries its own weights", "drop --weights")
