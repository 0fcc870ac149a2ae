"""Dissection core against a plain loop-by-loop NumPy transcription of NetDissect's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jinterp.errors import DataError, ShapeError
from jinterp.metrics import dissection as dis


def np_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centred bilinear resize of one (h, w) map, edges clamped (PyTorch align_corners=False)."""
    h, w = a.shape

    def axis(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    ylo, yhi, fy = axis(h, out_h)
    xlo, xhi, fx = axis(w, out_w)
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top = a[ylo[i], xlo[j]] * (1 - fx[j]) + a[ylo[i], xhi[j]] * fx[j]
            bot = a[yhi[i], xlo[j]] * (1 - fx[j]) + a[yhi[i], xhi[j]] * fx[j]
            out[i, j] = top * (1 - fy[i]) + bot * fy[i]
    return out


def reference_iou(acts, concepts: dis.ConceptSet, quantile):
    n, h, w, u = acts.shape
    _, _, H, W = concepts.pixel_labels.shape
    k = max(1, math.ceil(quantile * n * h * w))
    thresholds = np.array([np.sort(acts[..., j].ravel())[::-1][k - 1] for j in range(u)])
    dead = np.array([acts[..., j].min() == acts[..., j].max() for j in range(u)])
    L = concepts.num_concepts
    table = np.zeros((u, L))
    for j in range(u):
        for c in range(1, L + 1):
            g = concepts.category_of[c]
            inter = act = lab = 0.0
            for x in range(n):
                m = np_bilinear(acts[x, :, :, j], H, W) > thresholds[j]  # NetDissect-Lite: strict
                if dead[j]:
                    m[:] = False
                ids_here = set(concepts.pixel_labels[x].ravel()) | set(concepts.image_labels[x].ravel())
                cat_here = any(concepts.category_of[i] == g for i in ids_here if i > 0)
                lab_c = np.any(concepts.pixel_labels[x] == c, axis=0) | np.any(concepts.image_labels[x] == c)
                lab += lab_c.sum()
                if cat_here:
                    act += m.sum()
                inter += (m & lab_c).sum()
            union = act + lab - inter
            table[j, c - 1] = inter / union if union > 0 else 0.0
    return thresholds, dead, table


def _fixture(seed=0, n=7, h=4, w=4, H=12, W=12, u=5):
    rng = np.random.default_rng(seed)
    acts = np.maximum(rng.normal(size=(n, h, w, u)), 0).astype(np.float32)
    acts[..., 3] = 0.0  # a dead unit
    obj = rng.integers(0, 3, (n, H, W))
    part = rng.integers(0, 4, (n, H, W))
    part[0] = 0  # image 0 carries no part label: the category rule must exclude it for part concepts
    tex = rng.integers(0, 3, (n,))  # 0 = none for some images
    concepts = dis.concepts_from_label_maps({"object": obj, "part": part}, {"texture": tex},
                                            {"object": ["a", "b"], "part": ["p", "q", "r"], "texture": ["s", "t"]})
    return acts, concepts


def _stream(acts, batch_size):
    return [acts[i:i + batch_size] for i in range(0, len(acts), batch_size)]


@pytest.mark.parametrize("quantile", [0.005, 0.2])
def test_matches_numpy_reference(quantile):
    acts, concepts = _fixture()
    ref_th, ref_dead, ref = reference_iou(acts, concepts, quantile)
    th = dis.quantile_thresholds(_stream(acts, 3), acts.shape[0] * 16, quantile)
    np.testing.assert_allclose(th.value, ref_th, rtol=1e-6)
    np.testing.assert_array_equal(th.dead, ref_dead)
    table = dis.iou(dis.tally(_stream(acts, 3), concepts, th, batch_size=3), concepts)
    np.testing.assert_allclose(table, ref, atol=1e-5)
    assert np.all(table[3] == 0) and not np.isnan(table).any()


def test_images_labelled_at_every_pixel_keep_all_their_concepts():
    # Regression: with no unlabelled pixel in an image, the lowest present concept must still be tallied.
    rng = np.random.default_rng(4)
    labels = rng.integers(1, 4, (5, 6, 6))
    concepts = dis.concepts_from_label_maps({"c": labels}, {}, {"c": ["a", "b", "d"]})
    acts = np.stack([labels == k for k in (1, 2, 3)], -1).astype(np.float32)
    th = dis.Thresholds(np.full(3, 0.5, np.float32), np.zeros(3, bool))
    table = dis.iou(dis.tally([acts], concepts, th, batch_size=5), concepts)
    np.testing.assert_allclose(table, np.eye(3), atol=1e-6)


def test_concept_names_and_categories():
    _, concepts = _fixture()
    assert concepts.names == ("-", "object:a", "object:b", "part:p", "part:q", "part:r", "texture:s", "texture:t")
    assert list(concepts.category_of) == [0, 0, 0, 1, 1, 1, 2, 2]


def test_unit_equal_to_a_label_mask_has_iou_one_and_its_complement_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (6, 8, 8))
    concepts = dis.concepts_from_label_maps({"object": labels}, {}, {"object": ["thing"]})
    acts = np.stack([labels == 1, labels == 0], -1).astype(np.float32)  # at label resolution
    # A quantile above each unit's firing share gives threshold 0, and the strict ">" keeps exactly its 1-pixels.
    th = dis.quantile_thresholds([acts], acts.shape[0] * 64, 0.75)
    np.testing.assert_array_equal(th.value, 0.0)
    table = dis.iou(dis.tally([acts], concepts, th, batch_size=6), concepts)
    assert table[0, 0] == pytest.approx(1.0)
    assert table[1, 0] == pytest.approx(0.0)
    res = dis.label_units(table)
    assert res.num_detectors == 1 and res.num_unique == 1


def test_mostly_zero_unit_gets_threshold_zero_and_marks_only_its_positive_pixels():
    # A unit zero on >= 99.5 % of positions has T = 0; NetDissect-Lite's strict ">" keeps only its few positive
    # pixels, where ">=" would mark every pixel active and score a whole-image texture detector.
    rng = np.random.default_rng(3)
    n, h = 20, 10
    acts = np.zeros((n, h, h, 1), np.float32)
    acts[0, 2, 3, 0] = 1.0  # one positive position in 2000 (0.05 %)
    part = np.zeros((n, h, h), int)
    part[0, 2, 3] = 1
    tex = rng.integers(1, 3, (n,))  # every image carries a texture label
    concepts = dis.concepts_from_label_maps({"part": part}, {"texture": tex}, {"part": ["p"], "texture": ["s", "t"]})
    th = dis.quantile_thresholds([acts], n * h * h, 0.005)
    assert th.value[0] == 0.0 and not th.dead[0]
    table = dis.iou(dis.tally([acts], concepts, th, batch_size=n), concepts)
    assert table[0, 0] == pytest.approx(1.0)             # the part it fires on
    assert table[0, 1:].max() < 0.01                     # not a texture detector


def test_s1_s2_closed_forms_equal_the_threshold_integrals():
    rng = np.random.default_rng(2)
    train, val = rng.uniform(0, 0.5, (9, 6)), rng.uniform(0, 0.5, (9, 6))
    s1, s2 = dis.s1_s2(train, val)
    best = train.argmax(1)
    phi = val[np.arange(9), best]
    xi = (np.arange(100000) + 0.5) / 100000
    above = phi[None, :] >= xi[:, None]                                  # (thresholds, directions)
    s1_num = above.sum(1).mean()
    concept_hit = (above.astype(int) @ np.eye(6, dtype=int)[best]) > 0     # some direction labelled c is above
    s2_num = concept_hit.sum(1).mean()
    assert s1 == pytest.approx(s1_num, abs=1e-4)
    assert s2 == pytest.approx(s2_num, abs=1e-4)


def test_bad_inputs_are_rejected():
    acts, concepts = _fixture()
    th = dis.quantile_thresholds(_stream(acts, 3), acts.shape[0] * 16, 0.005)
    with pytest.raises(ShapeError, match="cover"):
        dis.tally(_stream(acts[:5], 3), concepts, th, batch_size=3)
    with pytest.raises(DataError, match="max_labels"):
        dis.tally(_stream(acts, 3), concepts, th, batch_size=3, max_labels=2)
    with pytest.raises(DataError, match="total_positions"):
        dis.quantile_thresholds(_stream(acts, 3), 5, 0.005)
    with pytest.raises(ShapeError, match="different shapes"):
        dis.concepts_from_label_maps({"a": np.zeros((2, 4, 4), int), "b": np.zeros((2, 5, 5), int)}, {},
                                     {"a": ["x"], "b": ["y"]})
    with pytest.raises(DataError, match="range"):
        dis.concepts_from_label_maps({"a": np.full((2, 4, 4), 3)}, {}, {"a": ["x"]})


def _write_broden():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "test_data_readers.py"
    spec = importlib.util.spec_from_file_location("_broden_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_broden


def test_concepts_from_a_broden_format_dataset(tmp_path):
    from jinterp.data import load

    expect = _write_broden()(tmp_path, n=6, ih=16, sh=8)
    ds = load(f"broden:{tmp_path}")
    cs = dis.concepts_from_dataset(ds, categories=["color", "object", "part", "texture"], size=(8, 8))
    assert cs.names == ("-", "color:red", "color:blue", "object:dog", "object:cat", "part:head", "part:leg",
                        "texture:striped")
    assert cs.pixel_labels.shape == (4, 3, 8, 8)
    # object codes 1..2 map to global ids 3..4; half-size nearest resize of the image-size masks.
    obj = np.stack(expect["object"][:4])[:, ::2, ::2]
    np.testing.assert_array_equal(cs.pixel_labels[:, 1], np.where(obj > 0, obj + 2, 0))
    np.testing.assert_array_equal(cs.image_labels[:, 0], np.where(ds.image_labels["texture"] > 0, 7, 0))
    # The IoU of a unit equal to the "dog" mask is 1 on these labels.
    acts = (cs.pixel_labels[:, 1] == 3).astype(np.float32)[..., None]
    th = dis.Thresholds(np.array([0.5], np.float32), np.zeros(1, bool))
    table = dis.iou(dis.tally([acts], cs, th, batch_size=4), cs)
    assert table[0, 2] == pytest.approx(1.0)


def test_concepts_from_synthparts_and_feature_grid_labels():
    from jinterp.data import load

    ds = load("synthparts:n_train=6,n_test=2,size=32", "train")
    cs = dis.concepts_from_dataset(ds, size=(16, 16))
    assert cs.categories == ("object", "part", "color", "texture") and "slot" not in "".join(cs.names)
    lab = dis.downsample_labels(cs, (4, 4))
    assert lab.shape == (6, 4, 4, cs.num_concepts)
    # Image-level texture concepts cover every pixel of their images; pixel concepts are nearest-sampled.
    tex0 = cs.names.index("texture:stripes") - 1
    assert np.array_equal(lab[:, :, :, tex0].all((1, 2)), ds.image_labels["texture"] == 1)
    obj = cs.pixel_labels[:, 0][:, 2::4, 2::4]
    for j in range(1, 7):
        np.testing.assert_array_equal(lab[..., j - 1], obj == j)
    with pytest.raises(DataError, match="no annotation category"):
        dis.concepts_from_dataset(ds, categories=["scene"])


def test_counts_above_what_half_precision_holds_are_exact():
    """The tally's mask matmul must count in integers: per image the counts here lie above 2**11 and some are odd
    (float16 has no odd integers there, bfloat16 none above 2**8), so a narrower accumulator shows as a miscount."""
    rng = np.random.default_rng(5)
    n, size = 3, 64
    labels = (rng.random((n, size, size)) < 0.7).astype(int)              # concept 1 on ~2870 pixels per image
    fires = rng.random((n, size, size)) < 0.9                             # the unit: on ~3690 pixels per image
    acts = fires[..., None].astype(np.float32)                             # at label resolution: no resampling
    concepts = dis.concepts_from_label_maps({"object": labels}, {}, {"object": ["thing"]})
    th = dis.Thresholds(np.array([0.5], np.float32), np.zeros(1, bool))
    t = dis.tally([acts], concepts, th, batch_size=n)
    per_image = (fires & (labels == 1)).sum((1, 2))
    assert per_image.min() > 2**11 and np.any(per_image % 2 == 1) and np.any(fires.sum((1, 2)) % 2 == 1)
    assert np.asarray(t.intersection)[0, 1] == per_image.sum()
    assert np.asarray(t.activated)[0, 0] == fires.sum()
    assert np.asarray(t.label_count)[1] == (labels == 1).sum()
