"""synthparts: determinism, chunking, and ground truth consistent with the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from jinterp.data import SynthPartsConfig, generate, load
from jinterp.data import synthparts as sp
from jinterp.errors import ConfigError


@pytest.fixture(scope="module")
def batch():
    return generate(96, seed=7, config=SynthPartsConfig.hard())


def test_same_seed_same_bytes_and_chunking():
    a = generate(40, seed=3, chunk=256)
    b = generate(40, seed=3, chunk=256)
    c = generate(25, seed=3, start=15, chunk=7)  # other chunk boundaries and offset
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
        assert a[k][15:].tobytes() == c[k].tobytes(), k


def test_different_seed_or_split_differs():
    a, b = generate(8, seed=0), generate(8, seed=1)
    t = generate(8, seed=0, split="test")
    assert not np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], t["image"])


def test_shapes_and_ranges(batch):
    n, s, p = 96, 64, sp.NUM_SLOTS
    assert batch["image"].shape == (n, s, s, 3) and batch["image"].dtype == np.uint8
    assert batch["landmarks"].shape == (n, p, 2) and batch["landmark_visible"].shape == (n, p)
    assert set(np.unique(batch["label"])) <= set(range(6))
    assert batch["part"].max() <= len(sp.SHAPES) and batch["color"].max() <= len(sp.COLORS)
    assert set(np.unique(batch["texture"])) <= set(range(len(sp.TEXTURES)))


def test_label_maps_consistent(batch):
    obj, part, slot, color = batch["object"], batch["part"], batch["slot"], batch["color"]
    assert np.all((part > 0) <= (obj > 0)), "object mask must contain the part mask"
    assert np.all((part > 0) == (slot > 0))
    assert np.all((obj > 0) <= (color > 0)), "every object pixel has a color"
    lab = batch["label"][:, None, None]
    assert np.all(np.where(obj > 0, obj == lab + 1, True)), "object map holds the image's category"
    for j in range(sp.NUM_SLOTS):  # a slot's pixels carry that slot's part type
        want = batch["slot_part"][:, j][:, None, None]
        assert np.all(np.where(slot == j + 1, part == want, True))


def test_visible_landmarks_lie_on_their_part(batch):
    lm, vis, slot = batch["landmarks"], batch["landmark_visible"], batch["slot"]
    assert vis.any() and (~vis[batch["slot_part"] > 0]).any()  # the hard preset hides some parts
    for i, j in zip(*np.nonzero(vis), strict=True):
        ys, xs = np.nonzero(slot[i] == j + 1)
        assert len(ys), "a visible part has pixels"
        x, y = lm[i, j]
        # the center lies in the part's bounding box (rings and crescents have no pixel at their center)
        assert xs.min() - 1 <= x <= xs.max() + 2 and ys.min() - 1 <= y <= ys.max() + 2
    assert np.all(batch["landmarks"][batch["slot_part"] == 0] == -1)
    assert not np.any(vis[batch["slot_part"] == 0])


def test_masks_cover_everything_drawn():
    # Plain constant backgrounds and no noise: every pixel outside the color mask is the background color,
    # and colored pixels are their palette color times a brightness jitter in [0.9, 1.05].
    cfg = SynthPartsConfig(clutter=0.0, noise=0.0, distractors=(0, 0), occluders=(0, 0))
    d = generate(24, seed=5, config=cfg)
    for img, col in zip(d["image"], d["color"], strict=True):
        bg = img[col == 0].astype(int)
        assert np.abs(bg - bg[0]).max() <= 1
        fg, cid = img[col > 0].astype(float), col[col > 0] - 1
        ratio = (fg + 0.5) / (sp.PALETTE[cid] + 0.5)
        ok = (ratio > 0.88) & (ratio < 1.07) | (np.abs(fg - sp.PALETTE[cid]) < 3) | (fg >= 254)
        assert ok.all()


def test_sizes_and_dataset_form():
    for size in (32, 224):
        d = generate(3, config=SynthPartsConfig(size=size))
        assert d["image"].shape == (3, size, size, 3)
    ds = load("synthparts:size=32,n_train=20,n_test=10,seed=1,noise=0")
    assert len(ds) == 20 and ds.image_shape == (32, 32, 3) and ds.num_classes == 6
    assert set(ds.masks) == {"object", "part", "color", "slot"} and ds.concepts["part"][1] == "disc"
    assert len(load("synthparts", "test", n_test=10, size=32)) == 10


def test_config_validation():
    with pytest.raises(ConfigError, match="size"):
        SynthPartsConfig(size=16)
    with pytest.raises(ConfigError, match="num_categories"):
        SynthPartsConfig(num_categories=9)
    with pytest.raises(ConfigError, match="unknown synthparts option"):
        load("synthparts:n_train=5,colour=3")
    assert SynthPartsConfig.easy().noise == 0 and SynthPartsConfig.hard().max_rotation > 30


def _shape_variation(d, category):
    """Spread over images of the category's part layout with the object's pose divided out: the pairwise distances
    between its slot centres, divided by their norm, are invariant to position, scale, rotation and flip, so their
    std across images is 0 exactly when the parts sit at fixed offsets in the object frame."""
    n_slots = int((d["slot_part"][d["label"] == category][0] > 0).sum())
    lm = d["landmarks"][d["label"] == category][:, :n_slots].astype(np.float64)
    i, j = np.triu_indices(n_slots, 1)
    dist = np.linalg.norm(lm[:, i] - lm[:, j], axis=-1)
    dist /= np.linalg.norm(dist, axis=1, keepdims=True)
    return len(lm), float(dist.std(0).max())


def test_articulated_parts_move_relative_to_their_object_and_rigid_ones_do_not():
    rigid = generate(120, seed=4, config=SynthPartsConfig.rigid())
    art = generate(120, seed=4, config=SynthPartsConfig.articulated())
    for category in range(6):
        (nr, r), (na, a) = _shape_variation(rigid, category), _shape_variation(art, category)
        assert nr >= 5 and na >= 5
        assert r < 1e-4, "rigid: part offsets are fixed in the object frame"
        assert a > 0.03, "articulated: part offsets vary across images"
    # objects range over more of the frame than in the rigid preset
    spread = lambda d: d["landmarks"][d["landmark_visible"]].std(0).mean()  # noqa: E731
    assert spread(art) > spread(rigid)


def test_rigid_is_the_default_byte_for_byte():
    a, b = generate(16, seed=2), generate(16, seed=2, config=SynthPartsConfig.rigid())
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_articulated_is_deterministic_chunk_invariant_and_consistent():
    cfg = SynthPartsConfig.articulated()
    a = generate(40, seed=3, config=cfg, chunk=256)
    c = generate(25, seed=3, start=15, chunk=7, config=cfg)
    for k in a:
        assert a[k][15:].tobytes() == c[k].tobytes(), k
    test_label_maps_consistent(a)
    test_visible_landmarks_lie_on_their_part(generate(96, seed=7, config=SynthPartsConfig.articulated(
        occluders=(0, 2))))


def test_dropped_parts_are_not_drawn_and_their_landmarks_are_invisible():
    cfg = SynthPartsConfig.articulated(part_drop=0.5, occluders=(0, 0), distractors=(0, 0))
    d = generate(60, seed=1, config=cfg)
    exists = d["slot_part"] > 0
    drawn = np.stack([(d["slot"] == j + 1).any((1, 2)) for j in range(sp.NUM_SLOTS)], 1)
    assert 0.3 < (exists & ~drawn).sum() / exists.sum() < 0.7
    assert not np.any(d["landmark_visible"] & ~drawn)
    with pytest.raises(ConfigError, match="part_drop"):
        SynthPartsConfig(part_drop=1.0)
