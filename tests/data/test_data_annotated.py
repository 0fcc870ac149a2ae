"""Readers of annotated sets (CUB-200-2011, VOC, Pascal-Part, Broden) on fixtures in the official layouts, the
--data option parser, npz annotations, and the named-set content checks."""

from __future__ import annotations

import numpy as np
import pytest
from annotated_fixtures import CUB_PARTS, decoded, encode, write_broden_hard, write_cub, write_pascal_part, write_voc
from PIL import Image

from jinterp.data import Dataset, broden_concepts, load, split_spec
from jinterp.errors import ConfigError, DataError, JinterpError, MissingFileError, ShapeError


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, JinterpError)
    return msg


# ------------------------------------------------------------------------------------------------ CUB
def test_cub_round_trips_its_fixture_uncropped(tmp_path):
    truth = write_cub(tmp_path)
    ds = load(f"cub:{tmp_path}:split=all,size=24x26", "all")
    assert len(ds) == 6 and ds.num_classes == 3 and ds.class_names[0] == "001.Black_footed_Albatross"
    assert ds.meta["part_names"] == CUB_PARTS
    for r, i in enumerate(range(1, 7)):
        t = truth[i]
        h, w = t["hw"]
        src = decoded(tmp_path / "images" / t["name"])
        if i == 3:  # grayscale JPEG: loads as RGB (the grey value in all three channels)
            assert np.array_equal(src[..., 0], src[..., 2])
        want = np.asarray(Image.fromarray(src).resize((26, 24), Image.BILINEAR))
        np.testing.assert_array_equal(ds.images[r], want)
        assert ds.labels[r] == t["cls"]
        np.testing.assert_array_equal(ds.landmark_visible[r], t["vis"])
        scale = np.asarray([26 / w, 24 / h], np.float32)
        np.testing.assert_allclose(ds.landmarks[r], np.where(t["vis"][:, None], t["locs"] * scale, 0), rtol=1e-6)
    train = load(f"cub:{tmp_path}:size=24", "train")
    assert train.meta["image_ids"] == [1, 2, 4, 5]  # train_test_split.txt: 1 = train


def test_cub_crop_to_box_moves_landmarks_and_hides_parts_outside(tmp_path):
    truth = write_cub(tmp_path, segmentations=True)
    ds = load(f"cub:{tmp_path}:crop=box,size=22,classes=002.Laysan_Albatross+0", split="all")
    assert ds.meta["image_ids"] == [1, 2, 4, 5] and ds.class_names == ("001.Black_footed_Albatross",
                                                                       "002.Laysan_Albatross")
    assert ds.labels.tolist() == [0, 1, 0, 1]
    for r, i in enumerate(ds.meta["image_ids"]):
        t = truth[i]
        window = decoded(tmp_path / "images" / t["name"])[3:14, 2:14]  # x 2..14, y 3..14 (13.5 rounded up)
        np.testing.assert_array_equal(ds.images[r], np.asarray(Image.fromarray(window).resize((22, 22),
                                                                                             Image.BILINEAR)))
        inside = t["vis"] & (t["locs"][:, 0] < 14) & (t["locs"][:, 1] >= 3)
        np.testing.assert_array_equal(ds.landmark_visible[r], inside)
        want = (t["locs"] - [2, 3]) * [22 / 12, 22 / 11]
        np.testing.assert_allclose(ds.landmarks[r], np.where(inside[:, None], want, 0), rtol=1e-5, atol=1e-5)
        seg = t["seg"][3:14, 2:14]
        ys, xs = ((np.arange(22) + 0.5) * 11 / 22).astype(int), ((np.arange(22) + 0.5) * 12 / 22).astype(int)
        np.testing.assert_array_equal(ds.masks["object"][r], seg[ys[:, None], xs[None, :]])
    assert not ds.landmark_visible[1, 1]  # image 2's beak lies outside its box


def test_cub_bad_input_names_file_and_line(tmp_path):
    write_cub(tmp_path)
    with pytest.raises(ShapeError, match="several sizes.*size=224") as e:
        load(f"cub:{tmp_path}")
    one_line(e)
    with pytest.raises(MissingFileError, match="nowhere"):
        load(f"cub:{tmp_path / 'nowhere'}")
    lines = (tmp_path / "bounding_boxes.txt").read_text().splitlines()
    lines[2] = "3 2.0 3.0 twelve 10.5"
    (tmp_path / "bounding_boxes.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"bounding_boxes.txt line 3: cannot parse") as e:
        load(f"cub:{tmp_path}:size=24")
    one_line(e)
    (tmp_path / "parts" / "part_locs.txt").unlink()
    with pytest.raises(MissingFileError, match="part_locs.txt is missing"):
        load(f"cub:{tmp_path}:size=24")


def test_cub_segmentation_of_another_size_is_refused(tmp_path):
    truth = write_cub(tmp_path, segmentations=True)
    seg = tmp_path / "segmentations" / truth[2]["name"].replace(".jpg", ".png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(seg)
    with pytest.raises(ShapeError, match="img_0002.png is \\(5, 5\\)"):
        load(f"cub:{tmp_path}:size=24")


# ------------------------------------------------------------------------------------------------ VOC
def test_voc_round_trips_boxes_and_classes(tmp_path):
    truth = write_voc(tmp_path)
    from jinterp.data.voc import VOC_CLASSES

    ds = load(f"voc:{tmp_path}:size=20x30")
    assert ds.meta["ids"] == list(truth)[:4] and ds.class_names == VOC_CLASSES
    # largest non-difficult object: person, cat, dog (the bird is bigger but difficult), car
    assert [ds.class_names[k] for k in ds.labels] == ["person", "cat", "dog", "car"]
    for r, image_id in enumerate(ds.meta["ids"]):
        (h, w), objs = truth[image_id]
        src = decoded(tmp_path / "JPEGImages" / f"{image_id}.jpg")
        np.testing.assert_array_equal(ds.images[r], np.asarray(Image.fromarray(src).resize((30, 20), Image.BILINEAR)))
        got = ds.meta["objects"][r]
        for o, (name, diff, (xmin, ymin, xmax, ymax)) in zip(got, objs, strict=True):
            assert VOC_CLASSES[int(o[0])] == name and o[1] == diff
            np.testing.assert_allclose(o[2:], [(xmin - 1) * 30 / w, (ymin - 1) * 20 / h, xmax * 30 / w,
                                               ymax * 20 / h], rtol=1e-6)
    val = load(f"voc:{tmp_path}:size=20x30", "val")
    assert val.meta["ids"] == list(truth)[4:]


def test_voc_box_mask_and_crop(tmp_path):
    truth = write_voc(tmp_path)
    ds = load(f"voc:{tmp_path}:max_images=1", "train")  # one image: its own size, no resize needed
    (h, w), objs = truth["2010_000001"]
    want = np.zeros((h, w), np.uint8)
    want[1:18, 9:20] = 15  # person (larger) first: xmin 10 -> pixel 9, xmax 20 inclusive -> 20
    want[3:12, 2:14] = 12  # dog on top
    np.testing.assert_array_equal(ds.masks["object"][0], want)
    crop = load(f"voc:{tmp_path}:crop=box,size=8,classes=dog", split="all")
    assert crop.meta["ids"] == ["2010_000003", "2010_000005"] and crop.class_names == ("dog",)
    src = decoded(tmp_path / "JPEGImages" / "2010_000003.jpg")[4:11, 4:12]  # dog box 5..12 x, 5..11 y (1-based)
    np.testing.assert_array_equal(crop.images[0], np.asarray(Image.fromarray(src).resize((8, 8), Image.BILINEAR)))


def test_voc_bad_input(tmp_path):
    write_voc(tmp_path)
    xml = tmp_path / "Annotations" / "2010_000002.xml"
    xml.write_text(xml.read_text().replace("<width>23</width>", "<width>40</width>"))
    with pytest.raises(ShapeError, match="2010_000002.jpg is \\(20, 23\\).*says \\(20, 40\\)") as e:
        load(f"voc:{tmp_path}:size=8")
    one_line(e)
    xml.write_text("<annotation><size>")
    with pytest.raises(DataError, match="2010_000002.xml line 1: malformed XML"):
        load(f"voc:{tmp_path}:size=8")
    xml.unlink()
    with pytest.raises(MissingFileError, match="2010_000002.xml is missing"):
        load(f"voc:{tmp_path}:size=8")


# ------------------------------------------------------------------------------------------------ Pascal-Part
def test_pascal_part_round_trips_object_and_part_masks(tmp_path):
    truth = write_pascal_part(tmp_path)
    ds = load(f"pascal_part:{tmp_path}", split="all")
    assert ds.concepts["part"] == ("-", "head", "lfleg", "rfleg")
    for r, image_id in enumerate(ds.meta["ids"]):
        t = truth[image_id]
        np.testing.assert_array_equal(ds.images[r], decoded(tmp_path / "JPEGImages" / f"{image_id}.jpg"))
        np.testing.assert_array_equal(ds.masks["object"][r], t["object"])
        for code, name in enumerate(ds.concepts["part"][1:], 1):
            np.testing.assert_array_equal(ds.masks["part"][r] == code, t["parts"][name] > 0, err_msg=name)
        assert ds.labels[r] == t["label"]
    merged = load(f"pascal_part:{tmp_path}:part_merge=coarse", split="all")
    assert merged.concepts["part"] == ("-", "head", "leg")
    np.testing.assert_array_equal(merged.masks["part"] == 2, (ds.masks["part"] == 2) | (ds.masks["part"] == 3))
    own = load(f"pascal_part:{tmp_path}", split="all", part_merge={"lfleg": "foreleg", "rfleg": "foreleg"})
    assert own.concepts["part"] == ("-", "foreleg") and not (own.masks["part"] == 0)[ds.masks["part"] >= 2].any()


def test_pascal_part_bad_input(tmp_path):
    import scipy.io

    write_pascal_part(tmp_path)
    scipy.io.savemat(tmp_path / "Annotations_Part" / "2008_000001.mat", {"other": np.zeros(3)})
    with pytest.raises(DataError, match="2008_000001.mat: not a Pascal-Part annotation") as e:
        load(f"pascal_part:{tmp_path}", split="all")
    one_line(e)
    (tmp_path / "Annotations_Part" / "2008_000001.mat").unlink()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "JPEGImages" / "2008_000002.jpg")
    with pytest.raises(ShapeError, match="2008_000002.mat masks are \\(12, 14\\)"):
        load(f"pascal_part:{tmp_path}", split="all")


# ------------------------------------------------------------------------------------------------ Broden
def _code_maps(truth, ds, cat):
    """Expected per-category codes of every plane, at image size, from the written global numbers."""
    num_to_code = {num: code for code, num in ds.meta["label_numbers"][cat].items()}
    lut = np.vectorize(lambda v: num_to_code.get(int(v), 0))
    return [[np.repeat(np.repeat(lut(p), 2, 0), 2, 1) for p in t["planes"][cat]] for t in truth]


def test_broden_keeps_every_plane_and_every_image_label(tmp_path):
    truth = write_broden_hard(tmp_path)
    ds = load(f"broden:{tmp_path}", split="all")
    for cat in ("color", "object", "part"):
        want = _code_maps(truth, ds, cat)
        depth = ds.mask_planes[cat].shape[1]
        assert depth == max(len(w) for w in want)
        for i, planes in enumerate(want):
            for p in range(depth):
                exp = planes[p] if p < len(planes) else np.zeros((16, 16))
                np.testing.assert_array_equal(ds.mask_planes[cat][i, p], exp, err_msg=f"{cat} {i} {p}")
    # the overlap of head (plane 0) and leg (plane 1) keeps both labels; masks["part"] keeps the dominant one
    assert ds.concepts["part"] == ("-", "ring", "head", "leg")
    assert (ds.mask_planes["part"][0, 0, 4:8, 4:8] == 2).all() and (ds.mask_planes["part"][0, 1, 4:8, 4:8] == 3).all()
    assert (ds.masks["part"][0, 4:8, 4:8] == 2).all()
    codes = {8: 1, 9: 2}
    for i, t in enumerate(truth):  # multi-label cells: both textures kept
        row = ds.image_label_sets["texture"][i]
        assert sorted(row[row > 0].tolist()) == sorted(codes[v] for v in t["texture"])
        assert ds.image_labels["texture"][i] == (codes[t["texture"][0]] if t["texture"] else 0)
    assert ds.take([3, 0]).image_label_sets["texture"].tolist() == [[1, 2], [1, 2]]


def _ndl_pixel_counts(root, truth, sh):
    """Pixel counts per global label number as NetDissect-Lite's tally_labels: bincount over every plane of every
    pixel category, plus sh*sw per image-level label (read straight from the written PNGs' R + 256 G)."""
    counts = {}
    for t in truth:
        for planes in t["planes"].values():
            for p in planes:
                for v, c in zip(*np.unique(p, return_counts=True), strict=True):
                    if v:
                        counts[int(v)] = counts.get(int(v), 0) + int(c)
        for v in t["texture"] + t["scene"]:
            counts[v] = counts.get(v, 0) + sh * sh
    return counts


def test_broden_concepts_give_netdissect_lite_pixel_counts(tmp_path):
    truth = write_broden_hard(tmp_path)
    ds = load(f"broden:{tmp_path}", split="all")
    cs = broden_concepts(ds, size=ds.meta["segmentation_size"])
    # ring is one concept although object and part both list it
    assert cs.names == ("-", "red", "blue", "ring", "disc", "head", "leg", "beach", "forest", "striped", "dotted")
    number_of = {"red": 1, "blue": 2, "ring": 3, "disc": 300, "head": 4, "leg": 5, "beach": 6, "forest": 7,
                 "striped": 8, "dotted": 9}
    ours = {}
    for gid, name in enumerate(cs.names[1:], 1):
        n_pix = int((cs.pixel_labels == gid).sum()) + 64 * int((cs.image_labels == gid).sum())
        ours[number_of[name]] = n_pix
    ndl = _ndl_pixel_counts(tmp_path, truth, 8)
    assert ours == ndl
    # NetDissect-Lite's primary category is the max-coverage one: ring covers more as an object
    cats = cs.categories
    assert cats[cs.category_of[3]] == "object"
    first = broden_concepts(ds, categories=["part", "object", "color", "scene", "texture"],
                            category_rule="first_listed")
    assert first.categories[first.category_of[first.names.index("ring")]] == "part"
    with pytest.raises(ConfigError, match="category_rule"):
        broden_concepts(ds, category_rule="bogus")


def test_broden_bad_input_names_file_and_line(tmp_path):
    write_broden_hard(tmp_path)
    text = (tmp_path / "index.csv").read_text().splitlines()
    text[3] = text[3].replace(",16,16,8,8,", ",16,sixteen,8,8,")
    (tmp_path / "index.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="index.csv line 4: column 'iw' must be an integer") as e:
        load(f"broden:{tmp_path}")
    one_line(e)
    write_broden_hard(tmp_path / "b")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "b" / "images" / "ade/im2.jpg")
    with pytest.raises(ShapeError, match="index.csv line 4: images/ade/im2.jpg is \\(20, 20\\)"):
        load(f"broden:{tmp_path / 'b'}")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "b" / "images" / "ade/im2.jpg")
    Image.fromarray(encode(np.zeros((3, 3), int))).save(tmp_path / "b" / "images" / "ade/im1_color_0.png")
    with pytest.raises(ShapeError, match="im1_color_0.png is \\(3, 3\\)"):
        load(f"broden:{tmp_path / 'b'}")
    (tmp_path / "b" / "c_part.csv").unlink()  # codes then come from label.csv; texture 9 lies in c_texture.csv
    (tmp_path / "b" / "category.csv").unlink()
    with pytest.raises(MissingFileError, match="category.csv is missing"):
        load(f"broden:{tmp_path / 'b'}")


# ------------------------------------------------------------------------------------------------ options, npz
def test_spec_options_are_parsed_in_one_place(tmp_path):
    assert split_spec("cub:/d/CUB:crop=box,size=224,classes=1+2") == (
        "cub", "/d/CUB", {"crop": "box", "size": (224, 224), "classes": ("1", "2")})
    assert split_spec("tfds:mnist:/data/dir") == ("tfds", "mnist:/data/dir", {})
    assert split_spec("synthparts:size=32") == ("synthparts", "size=32", {})
    for bad, msg in (("npz:x.npz:size=0", "size"), ("npz:x.npz:part_merge=coarse", "unknown reader option"),
                     ("pascal_part:x:part_merge=fine", "part_merge"),
                     ("npz:x.npz:bogus=1", "unknown reader option 'bogus'"),
                     ("npz:x.npz:crop=ellipse", "crop"), ("npz:x.npz:max_images=-1", "max_images"),
                     ("npz:x.npz:split=dev", "split")):
        with pytest.raises(ConfigError, match=msg):
            load(bad)
    x = np.arange(10 * 8 * 8, dtype=np.uint8).reshape(10, 8, 8) % 251
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.warns(UserWarning, match="split=all replaces the requested 'train' split"):
        ds = load(f"npz:{tmp_path / 'd.npz'}:split=all,classes=2+0,max_images=3,size=4")
    assert ds.labels.tolist() == [0, 1, 0] and ds.class_names == ("0", "2")  # examples 0, 2, 3
    assert ds.image_shape == (4, 4, 1)
    with pytest.raises(ConfigError, match="crop=box needs bounding boxes"):
        load(f"npz:{tmp_path / 'd.npz'}:crop=box")


def test_npz_keeps_masks_landmarks_and_names(tmp_path):
    rng = np.random.default_rng(0)
    n = 10
    arrays = dict(x=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), y=np.arange(n) % 2,
                  mask_part=rng.integers(0, 3, (n, 8, 8)).astype(np.uint8), image_label_texture=np.arange(n) % 3,
                  landmarks=rng.uniform(0, 8, (n, 4, 2)).astype(np.float32), landmark_visible=rng.random((n, 4)) > .3,
                  concepts_part=np.asarray(["-", "head", "leg"]), class_names=np.asarray(["cat", "dog"]))
    np.savez(tmp_path / "a.npz", **arrays)
    ds = load(f"npz:{tmp_path / 'a.npz'}", "all")
    np.testing.assert_array_equal(ds.masks["part"], arrays["mask_part"])
    np.testing.assert_array_equal(ds.image_labels["texture"], arrays["image_label_texture"])
    np.testing.assert_array_equal(ds.landmarks, arrays["landmarks"])
    np.testing.assert_array_equal(ds.landmark_visible, arrays["landmark_visible"])
    assert ds.concepts["part"] == ("-", "head", "leg") and ds.class_names == ("cat", "dog")
    test = load(f"npz:{tmp_path / 'a.npz'}", "test")  # the 80/20 rule applies to the annotations too
    np.testing.assert_array_equal(test.landmarks, arrays["landmarks"][[4, 9]])
    half = load(f"npz:{tmp_path / 'a.npz'}:size=4", "all")
    np.testing.assert_allclose(half.landmarks, arrays["landmarks"] / 2)
    np.testing.assert_array_equal(half.masks["part"], arrays["mask_part"][:, 1::2, 1::2])


# ------------------------------------------------------------------------------------------------ named sets
def test_named_sets_refuse_content_of_another_set(tmp_path, shared_dir):
    with pytest.raises(DataError, match="28x28 1-channel images \\(like MNIST/Fashion-MNIST\\).*cifar10 images are "
                                        "32x32") as e:
        load(f"cifar10:{shared_dir / 'data' / 'mnist_test.npz'}")
    one_line(e)
    with pytest.raises(DataError, match="32x32 3-channel images \\(like CIFAR\\)"):
        load(f"fashion_mnist:{shared_dir / 'data' / 'cifar10_subset.npz'}")
    x = np.zeros((11, 28, 28), np.uint8)
    np.savez(tmp_path / "eleven.npz", x=x, y=np.arange(11))
    with pytest.raises(DataError, match="labels in \\[0, 10\\], but mnist has 10 classes labelled 0..9"):
        load(f"mnist:{tmp_path / 'eleven.npz'}", "all")
    assert load(f"npz:{tmp_path / 'eleven.npz'}", "all").num_classes == 11  # an unnamed npz: 11 classes is right
    assert load(f"mnist:{shared_dir / 'data' / 'mnist_test.npz'}", "test").num_classes == 10


def test_layout_mistakes_get_a_message_naming_the_layout():
    with pytest.raises(ShapeError, match="one \\(H, W, C\\) image without a batch axis.*image\\[None\\]"):
        Dataset(images=np.zeros((32, 32, 3), np.uint8), labels=[0], num_classes=1, class_names=("a",))
    with pytest.raises(ShapeError, match="NCHW.*transpose\\(0, 2, 3, 1\\)"):
        Dataset(images=np.zeros((2, 3, 32, 32), np.uint8), labels=[0, 0], num_classes=1, class_names=("a",))
    from jinterp.data import normalize

    with pytest.raises(ShapeError, match="NCHW.*transpose\\(0, 2, 3, 1\\)"):
        normalize(np.zeros((2, 3, 32, 32), np.uint8), "imagenet")
    ok = Dataset(images=np.zeros((2, 28, 28), np.uint8), labels=[0, 0], num_classes=1, class_names=("a",))
    assert ok.image_shape == (28, 28, 1)


def test_broden_concepts_feed_the_dissection_tally(tmp_path):
    """A unit equal to the 'leg' label -- which lies under 'head' in the overlap, on the second plane -- has IoU 1."""
    from jinterp.metrics import dissection as dis

    truth = write_broden_hard(tmp_path)
    ds = load(f"broden:{tmp_path}", split="all")
    cs = broden_concepts(ds, categories=["part", "object"], size=ds.meta["segmentation_size"])
    leg = cs.names.index("leg")
    acts = np.stack([sum(p == 5 for p in t["planes"]["part"]) for t in truth]).astype(np.float32)[..., None]
    th = dis.Thresholds(np.array([0.5], np.float32), np.zeros(1, bool))
    table = dis.iou(dis.tally([acts[:4], acts[4:]], cs, th, batch_size=4), cs)
    assert table[0, leg - 1] == pytest.approx(1.0)


def test_places365_preset_is_netdissect_lite_preprocessing():
    from jinterp.data import normalize

    rgb = np.array([[[[200, 100, 30]]]], np.uint8)
    bgr_mean = np.array([109.5388, 118.6897, 124.6901])
    want = (rgb[..., ::-1].astype(np.float64) - bgr_mean)[..., ::-1] / (255 * 0.224)  # feature_operation.py
    np.testing.assert_allclose(np.asarray(normalize(rgb, "places365")), want, rtol=1e-5)


def test_synthparts_keeps_its_own_size_option():
    from jinterp.data import synthparts_dataset

    a, b = load("synthparts", "train", size=32, n=3), synthparts_dataset("train", size=32, n=3)
    np.testing.assert_array_equal(a.images, b.images)  # generated at 32 px, not generated at 64 and resized


# ------------------------------------------------------------------------------------------------ lazy decoding
def test_lazy_sets_equal_eager_ones_batch_by_batch(tmp_path, monkeypatch):
    from jinterp.data import BatchIterator
    from jinterp.data import broden as broden_mod
    from jinterp.data.lazy import LazyArray

    write_broden_hard(tmp_path / "b")
    write_cub(tmp_path / "c", segmentations=True)
    for spec, masks in ((f"broden:{tmp_path / 'b'}:split=all", ("part", "object")),
                        (f"cub:{tmp_path / 'c'}:split=all,crop=box,size=12", ("object",))):
        eager, lazy = load(spec, "all"), load(spec + ",lazy=1", "all")
        assert isinstance(lazy.images, LazyArray) and all(isinstance(lazy.masks[m], LazyArray) for m in masks)
        np.testing.assert_array_equal(np.asarray(lazy.images), eager.images)
        for m in masks:
            np.testing.assert_array_equal(np.asarray(lazy.masks[m]), eager.masks[m])
        np.testing.assert_array_equal(np.asarray(lazy.take([5, 1]).images), eager.images[[5, 1]])
        kw = dict(seed=3, masks=masks, num_epochs=1, prefetch=0)
        for a, b in zip(BatchIterator(eager, 4, **kw), BatchIterator(lazy, 4, **kw), strict=True):
            for k in ("image", "label", *masks):
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{spec} {k}")
    # decoding really happens per batch: one batch of 2 decodes 2 images, not the set
    calls = []
    real = broden_mod.load_rgb
    monkeypatch.setattr(broden_mod, "load_rgb", lambda *a: calls.append(a[0]) or real(*a))
    lazy = load(f"broden:{tmp_path / 'b'}:lazy=1", "all")
    assert calls == []
    next(iter(BatchIterator(lazy, 2, seed=0, prefetch=0)))
    assert len(calls) == 2
    with pytest.raises(ConfigError, match="lazy decoding is available for folder, broden, cub and tfds"):
        load(f"voc:{tmp_path}:lazy=1")
    for k in range(3):  # an image folder, and one image of another size found when its batch is decoded
        (tmp_path / "f" / "cls").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6 + (k == 2), 3), 40 * k, np.uint8)).save(tmp_path / "f" / "cls" / f"{k}.png")
    lazy = load(f"folder:{tmp_path / 'f'}:lazy=1", "all")
    np.testing.assert_array_equal(lazy.images[[1, 0]], np.stack([np.full((6, 6, 3), v, np.uint8) for v in (40, 0)]))
    with pytest.raises(ShapeError, match="2.png is \\(6, 7, 3\\).*pass size=") as e:
        lazy.images[[2]]
    one_line(e)
