"""CSG's localization on ``voc:`` and ``pascal_part:`` data: the ground truth is the object of each image's class
(boxes from VOC's Annotations, masks from Pascal-Part's .mat files), wired into the CSG program."""

from __future__ import annotations

import numpy as np
import pytest
from annotated_fixtures import write_pascal_part, write_voc

from jinterp.data import read_pascal_part, read_voc
from jinterp.data.voc import VOC_CLASSES
from jinterp.errors import DataError
from jinterp.methods.csg import localization as loc


def _box_mask(hw, boxes):
    """Boxes ``(xmin, ymin, xmax, ymax)`` (VOC: 1-based inclusive corners) as a bool mask."""
    out = np.zeros(hw, bool)
    for xmin, ymin, xmax, ymax in boxes:
        out[ymin - 1:ymax, xmin - 1:xmax] = True
    return out


def test_voc_ground_truth_is_the_boxes_of_the_image_class(tmp_path):
    truth = write_voc(tmp_path, same_size=True)
    ds = read_voc(tmp_path, "all")
    gt = loc.object_masks(ds)
    assert gt.shape == (6, 20, 24) and gt.dtype == bool
    for i, image_id in enumerate(ds.meta["ids"]):
        (h, w), objs = truth[image_id]
        cls = VOC_CLASSES[ds.labels[i]]
        # the image's class is its largest non-difficult object's; every box of that class counts
        easy = [o for o in objs if not o[1]]
        assert cls == max(easy, key=lambda o: (o[2][2] - o[2][0]) * (o[2][3] - o[2][1]))[0]
        np.testing.assert_array_equal(gt[i], _box_mask((h, w), [b for c, _, b in objs if c == cls]))
    # image 0: the person's box (the class) is partly covered by the smaller dog box in masks["object"]; the
    # ground truth keeps the whole person box
    person = VOC_CLASSES.index("person") + 1
    assert gt[0].sum() > (ds.masks["object"][0] == person).sum()


def test_a_subset_keeps_each_image_with_its_own_boxes(tmp_path):
    """Dataset.take (CSG's program evaluates ``test_ds.take(arange(eval_size))``) subsets the per-image meta entries
    with the images: the ground truth of a subset is the subset of the ground truth."""
    write_voc(tmp_path, same_size=True)
    ds = read_voc(tmp_path, "all")
    idx = [4, 0, 2]
    sub = ds.take(idx)
    assert sub.meta["ids"] == [ds.meta["ids"][i] for i in idx] and len(sub.meta["objects"]) == 3
    np.testing.assert_array_equal(loc.object_masks(sub), loc.object_masks(ds)[idx])
    assert sub.meta["path"] == ds.meta["path"]


def test_voc_ground_truth_follows_crop_resize_and_class_selection(tmp_path):
    truth = write_voc(tmp_path)
    ds = read_voc(tmp_path, "train", crop="box", size=(16, 16), classes=["dog", "person", "car", "cat"])
    gt = loc.object_masks(ds)
    # cropped to the class's own largest box: the box is the whole image
    assert gt.shape == (4, 16, 16) and gt.all(axis=(1, 2)).all()
    assert [ds.class_names[y] for y in ds.labels] == ["person", "cat", "dog", "car"]
    whole = loc.object_masks(read_voc(tmp_path, "train", size=(20, 20), classes=["dog", "person", "car", "cat"]))
    assert not whole.all(axis=(1, 2)).all() and whole.any(axis=(1, 2)).all()
    assert len(truth) == 6


def test_pascal_part_ground_truth_is_the_class_object_mask(tmp_path):
    truth = write_pascal_part(tmp_path)
    ds = read_pascal_part(tmp_path, "all")
    gt = loc.object_masks(ds)
    for i, image_id in enumerate(ds.meta["ids"]):
        t = truth[image_id]
        assert ds.labels[i] == t["label"]
        np.testing.assert_array_equal(gt[i], t["object"] == t["label"] + 1)
    assert gt[0].sum() == 12 * 6 and gt[2].sum() == 56  # the person in image 0, the dog in image 2


def test_other_data_keeps_every_object_and_refuses_data_without_masks():
    from jinterp.data import synthparts_dataset

    ds = synthparts_dataset("train", n=4, size=32)
    np.testing.assert_array_equal(loc.object_masks(ds), ds.masks["object"] > 0)
    with pytest.raises(DataError, match="no object masks"):
        loc.object_masks(ds.__class__(images=ds.images, labels=ds.labels, num_classes=ds.num_classes,
                                      class_names=ds.class_names, name="plain"))


@pytest.mark.slow
def test_csg_program_scores_localization_on_voc(tmp_path, monkeypatch):
    from jinterp.core.config import apply_overrides
    from jinterp.methods.csg import CSGConfig, program

    write_voc(tmp_path / "voc")
    seen = []
    real = loc.evaluate
    monkeypatch.setattr(loc, "evaluate", lambda apply, images, masks, *a, **k: seen.append(masks) or real(
        apply, images, masks, *a, **k))
    cfg = apply_overrides(CSGConfig.tiny(), [
        f"data=voc:{tmp_path / 'voc'}:size=16", "epochs=2", "warmup_epochs=1", "mask_period=2", "mask_epoch_min=1",
        "batch_size=2", "eval_size=2", "adv_size=2", "pgd_steps=1", "n_top_channel=2", "widths=4,8,8,8", "seeds=1",
        "grad_blur_kernel=5", "eval_batch_size=2"])
    res = program.run(cfg, tmp_path / "run", progress=False)
    expected = loc.object_masks(read_voc(tmp_path / "voc", "test", size=(16, 16)))
    assert len(seen) == 2  # the CSG model and the standard one
    for masks in seen:
        np.testing.assert_array_equal(masks, expected)
    for m in res["models"].values():
        assert {"gradmap", "activmap"} <= set(m["localization"])
