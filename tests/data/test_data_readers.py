"""Readers: real files from ../shared/data where present, tiny generated fixtures otherwise, and bad input."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from jinterp.data import Dataset, load
from jinterp.data.broden_writer import encode as _encode
from jinterp.data.broden_writer import write_csv as _write_csv
from jinterp.errors import ConfigError, DataError, MissingFileError, ShapeError

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ Dataset
def _ds(n=4, **kw):
    base = dict(images=np.zeros((n, 8, 8, 3), np.uint8), labels=np.arange(n) % 2, num_classes=2,
                class_names=("a", "b"))
    return Dataset(**{**base, **kw})


def test_dataset_validation_and_take():
    ds = _ds(masks={"part": np.ones((4, 8, 8), np.uint8)}, image_labels={"t": [0, 1, 2, 3]},
             landmarks=np.zeros((4, 2, 2)), landmark_visible=np.ones((4, 2), bool))
    sub = ds.take([3, 1])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1] and sub.image_labels["t"].tolist() == [3, 1]
    assert sub.masks["part"].shape == (2, 8, 8) and sub.landmarks.dtype == np.float32
    with pytest.raises(ShapeError, match="mask 'part'"):
        _ds(masks={"part": np.zeros((4, 4, 4), np.int32)})
    with pytest.raises(DataError, match="empty"):
        _ds(n=0)
    with pytest.raises(DataError, match="labels must lie"):
        _ds(labels=[0, 1, 2, 0])
    with pytest.raises(ShapeError, match="uint8"):
        _ds(images=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ShapeError, match="together"):
        _ds(landmarks=np.zeros((4, 2, 2)))
    assert _ds(images=np.zeros((4, 8, 8), np.uint8)).image_shape == (8, 8, 1)


# ------------------------------------------------------------------------------------------------ real data
def test_real_npz_files(shared_dir):
    d = shared_dir / "data"
    tr, te = load(f"cifar10:{d / 'cifar10_subset.npz'}"), load(f"npz:{d / 'cifar10_subset.npz'}", "test")
    assert tr.images.shape == (3728, 32, 32, 3) and len(te) == 846 and tr.class_names[0] == "airplane"
    mtr, mte = load(f"npz:{d / 'mnist_test.npz'}"), load(f"mnist:{d / 'mnist_test.npz'}", "test")
    assert len(mtr) == 8000 and len(mte) == 2000 and mtr.image_shape == (28, 28, 1)  # i % 5 == 4 is test
    raw = np.load(d / "mnist_test.npz")
    assert np.array_equal(mte.images[:, :, :, 0], raw["x"][4::5]) and np.array_equal(mte.labels, raw["y"][4::5])
    f = load(f"fashion_mnist:{d / 'fashion_mnist_subset.npz'}", "all")
    assert len(f) == 4443 and f.class_names[9] == "Ankle boot" and f.num_classes == 10


# ------------------------------------------------------------------------------------------------ fixtures
def _write_idx(path, arr):
    code = {np.uint8: 0x08}[arr.dtype.type]
    raw = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    (gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb")).write(raw)


def test_mnist_idx(tmp_path):
    x, y = RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", y)  # plain (not gzipped) also works
    ds = load(f"mnist:{tmp_path}", "test")
    assert np.array_equal(ds.images[..., 0], x) and np.array_equal(ds.labels, y)
    assert len(load(f"fashion_mnist:{tmp_path}", "all")) == 12
    # truncated data: the file and the mismatch are named
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="t10k-images"):
        load(f"mnist:{tmp_path}", "test")
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingFileError, match="t10k-labels-idx1-ubyte"):
        load(f"mnist:{tmp_path}", "test")


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_batches(tmp_path):
    imgs = RNG.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    flat = imgs.transpose(0, 3, 1, 2).reshape(6, -1)  # CIFAR stores channel planes
    for i in range(1, 6):
        _pickle(tmp_path / f"data_batch_{i}", {b"data": flat, b"labels": list(range(6))})
    _pickle(tmp_path / "test_batch", {b"data": flat[:2], b"labels": [7, 9]})
    _pickle(tmp_path / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    tr, te = load(f"cifar10:{tmp_path}"), load(f"cifar10:{tmp_path}", "test")
    assert len(tr) == 30 and np.array_equal(tr.images[:6], imgs) and te.labels.tolist() == [7, 9]
    assert tr.class_names[3] == "c3"
    (tmp_path / "data_batch_3").write_bytes((tmp_path / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load(f"cifar10:{tmp_path}")
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(MissingFileError, match="data_batch_5"):
        load(f"cifar10:{tmp_path}")


def test_cifar100_fine_and_coarse(tmp_path):
    flat = RNG.integers(0, 256, (4, 3072), dtype=np.uint8)
    for split in ("train", "test"):
        _pickle(tmp_path / split, {b"data": flat, b"fine_labels": [0, 99, 5, 6], b"coarse_labels": [0, 19, 1, 1]})
    _pickle(tmp_path / "meta", {b"fine_label_names": [b"f%d" % i for i in range(100)],
                                b"coarse_label_names": [b"g%d" % i for i in range(20)]})
    fine, coarse = load(f"cifar100:{tmp_path}"), load(f"cifar100:{tmp_path}", "test", label="coarse")
    assert fine.num_classes == 100 and fine.labels.tolist() == [0, 99, 5, 6] and fine.class_names[99] == "f99"
    assert coarse.num_classes == 20 and coarse.labels.tolist() == [0, 19, 1, 1]


def test_image_folder(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    tr, te = load(f"folder:{tmp_path}"), load(f"folder:{tmp_path}", "test")
    assert len(tr) == 8 and len(te) == 2 and tr.class_names == ("cat", "dog") and te.labels.tolist() == [0, 1]
    assert tr.image_shape == (10, 12, 3)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "dog" / "9.png")
    with pytest.raises(ShapeError, match="size=\\(H, W\\)"):
        load(f"folder:{tmp_path}", "all")
    assert load(f"folder:{tmp_path}", "all", size=(8, 8)).image_shape == (8, 8, 3)
    (tmp_path / "dog" / "9.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="9.png"):
        load(f"folder:{tmp_path}", "all", size=(8, 8))


# ------------------------------------------------------------------------------------------------ Broden
def write_broden(root, n=6, ih=16, sh=8):
    """A tiny Broden-format data set; returns the expected per-category code maps at image size."""
    # global numbering: 1-2 colors, 3 object "dog", 300 object "cat" (needs the G channel), 4 part "head",
    # 5 part "leg", 6-7 scenes, 8 texture "striped"
    labels = [(1, "red", "color(1)"), (2, "blue", "color(1)"), (3, "dog", "object(1)"), (300, "cat", "object(1)"),
              (4, "head", "part(1)"), (5, "leg", "part(1)"), (6, "beach", "scene(1)"), (7, "forest", "scene(1)"),
              (8, "striped", "texture(1)")]
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               [(num, nm, cat, 1, 1.0, "") for num, nm, cat in labels])
    cats = ["color", "object", "part", "scene", "texture"]
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], [(c, 0, 0, 0, 0) for c in cats])
    by_cat = {c: [(num, nm) for num, nm, cc in labels if cc.startswith(c)] for c in cats}
    for c in cats[:-1]:  # no c_texture.csv: the reader derives codes from label.csv
        _write_csv(root / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
                   [(i + 1, num, nm, 1, 1.0) for i, (num, nm) in enumerate(by_cat[c])])
    (root / "images" / "src").mkdir(parents=True)
    rows, expect = [], {"color": [], "object": [], "part": []}
    for i in range(n):
        stem = f"src/im{i}"
        Image.fromarray(RNG.integers(0, 256, (ih, ih, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg",
                                                                                   quality=95)
        color = RNG.choice([0, 1, 2], (sh, sh))
        obj = np.zeros((sh, sh), int)
        obj[2:6, 1:7] = 300 if i % 2 else 3
        part1, part2 = np.zeros((sh, sh), int), np.zeros((sh, sh), int)
        part1[2:4, 1:4] = 4
        part2[3:6, 2:6] = 5  # second plane: only fills pixels the dominant plane leaves empty
        entry = {"color": [color], "object": [obj] if i != 0 else [], "part": [part1, part2]}
        cols = {}
        for c, planes in entry.items():
            names = []
            for k, pl in enumerate(planes):
                name = f"{stem}_{c}_{k}.png"
                Image.fromarray(_encode(pl)).save(root / "images" / name)
                names.append(name)
            cols[c] = ";".join(names)
            merged = np.zeros((sh, sh), int)
            for pl in planes:
                code = np.vectorize({0: 0, **{num: j + 1 for j, (num, _) in enumerate(by_cat[c])}}.get)(pl)
                merged = np.where(merged == 0, code, merged)
            expect[c].append(np.repeat(np.repeat(merged, ih // sh, 0), ih // sh, 1))
        rows.append([cols["part"], f"{stem}.jpg", "train" if i < 4 else "val", ih, ih, sh, sh, cols["color"],
                     cols["object"], "6" if i % 2 else "7", "8" if i % 3 == 0 else ""])
    _write_csv(root / "index.csv", ["part", "image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene",
                                    "texture"], rows)  # column order differs from the usual on purpose
    return expect


def test_broden_round_trip(tmp_path):
    expect = write_broden(tmp_path)
    ds, val = load(f"broden:{tmp_path}"), load(f"broden:{tmp_path}", "val")
    assert len(ds) == 4 and len(val) == 2 and ds.image_shape == (16, 16, 3)
    for c in ("color", "object", "part"):
        assert np.array_equal(ds.masks[c], np.stack(expect[c][:4])), c
        assert np.array_equal(val.masks[c], np.stack(expect[c][4:])), c
    assert ds.concepts["object"] == ("-", "dog", "cat") and ds.concepts["texture"] == ("-", "striped")
    assert ds.image_labels["texture"].tolist() == [1, 0, 0, 1]
    assert ds.labels.tolist() == [2, 1, 2, 1] and ds.class_names == ("-", "beach", "forest")  # labels = scene
    assert ds.masks["object"][0].max() == 0  # image without an object mask


def test_broden_bad_input(tmp_path):
    write_broden(tmp_path)
    bad = np.full((8, 8), 99)  # a label number c_color.csv does not list
    Image.fromarray(_encode(bad)).save(tmp_path / "images" / "src/im1_color_0.png")
    with pytest.raises(DataError, match="im1_color_0.png.*99"):
        load(f"broden:{tmp_path}")
    (tmp_path / "label.csv").unlink()
    with pytest.raises(MissingFileError, match="label.csv"):
        load(f"broden:{tmp_path}")


# ------------------------------------------------------------------------------------------------ specs
def test_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="one of"):
        load("imagenet:/x")
    with pytest.raises(MissingFileError, match="nowhere.*put"):
        load(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="needs a path"):
        load("npz")
    np.savez(tmp_path / "a.npz", foo=np.zeros(3))
    with pytest.raises(DataError, match="train_x"):
        load(f"npz:{tmp_path / 'a.npz'}")
    (tmp_path / "b.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:40])
    with pytest.raises(DataError, match="b.npz"):
        load(f"npz:{tmp_path / 'b.npz'}")
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4), np.uint8), y=np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="empty"):
        load(f"npz:{tmp_path / 'e.npz'}", "all")


def test_with_synthparts_defaults_fills_only_what_the_spec_leaves_open():
    from jinterp.data import with_synthparts_defaults as fill

    assert fill("synthparts", size=32, n_train=None) == "synthparts:size=32"
    assert fill("synthparts:n_train=50", size=64, n_train=800, n_test=None) == "synthparts:n_train=50,size=64"
    assert fill("synthparts") == "synthparts"
    assert fill("npz:x.npz", size=32) == "npz:x.npz"  # other sources keep their own sizes
