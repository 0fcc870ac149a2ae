"""Dissection on Broden-format data: the chunk-streamed tally equals the materialized one, NetDissect-Lite's IoU
category rule beside the paper's, and ``jinterp basis`` end to end on a Broden folder (``broden_concepts``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from annotated_fixtures import write_broden_hard

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.core.features import iter_features
from jinterp.data import broden_concepts, read_broden
from jinterp.errors import ConfigError, DataError
from jinterp.metrics import dissection as dis


def _acts(n, h, u, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, h, u)).astype(np.float32)


def _batches(acts, b):
    return [acts[i:i + b] for i in range(0, len(acts), b)]


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("rule", ["paper", "netdissect"])
def test_chunked_tally_equals_the_materialized_tally_exactly(tmp_path, lazy, rule):
    write_broden_hard(tmp_path, n=10, n_train=10)
    ds = read_broden(tmp_path, "all", lazy=lazy)
    whole = broden_concepts(read_broden(tmp_path, "all"), size=(8, 8))  # every image's labels at once
    acts = _acts(len(ds), 4, 6)
    th = dis.quantile_thresholds(_batches(acts, 2), len(ds) * 16, 0.2)
    ref = dis.tally(_batches(acts, 2), whole, th, 2, max_labels=32, category_rule=rule)
    built = []

    def concepts_of(start, stop):
        built.append((start, stop))
        return broden_concepts(ds.take(np.arange(start, stop)), size=(8, 8))

    # chunk 5 in batches of 2 rounds down to 4 images: chunks 0-3, 4-7, 8-9 (the last short)
    got, head = dis.tally_chunked(iter(_batches(acts, 2)), concepts_of, len(ds), th, 2, chunk=5, max_labels=32,
                                  category_rule=rule)
    assert built == [(0, 4), (4, 8), (8, 10)]
    for field in ("intersection", "activated", "label_count"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(ref, field)), field)
    assert head.names == whole.names
    table = dis.iou(got, head)
    np.testing.assert_array_equal(table, dis.iou(ref, whole))
    assert table.max() > 0.05  # units meet concepts: not a comparison of empty tallies


def test_chunked_tally_refuses_mismatched_streams(tmp_path):
    write_broden_hard(tmp_path, n=6, n_train=6)
    ds = read_broden(tmp_path, "all")
    acts = _acts(6, 4, 3)
    th = dis.quantile_thresholds(_batches(acts, 2), 6 * 16)
    concepts_of = lambda s, e: broden_concepts(ds.take(np.arange(s, e)), size=(8, 8))  # noqa: E731
    with pytest.raises(Exception, match="more images than the concept labels"):
        dis.tally_chunked(iter(_batches(acts, 2)), concepts_of, 4, th, 2, chunk=2)
    with pytest.raises(Exception, match="activations cover 4 images"):
        dis.tally_chunked(iter(_batches(acts[:4], 2)), concepts_of, 6, th, 2, chunk=2)
    with pytest.raises(ConfigError, match="category_rule 'ndl' unknown"):
        dis.tally_chunked(iter(_batches(acts, 2)), concepts_of, 6, th, 2, category_rule="ndl")
    other = lambda s, e: dis.concepts_from_label_maps(  # noqa: E731  (the second chunk renames the concepts)
        {"object": np.ones((e - s, 8, 8), np.int32)}, {}, {"object": ["a", "b"] if s == 0 else ["c", "d"]})
    with pytest.raises(DataError, match="other concepts than those of the first chunk"):
        dis.tally_chunked(iter(_batches(acts, 2)), other, 6, th, 2, chunk=2)


def _hand_case():
    """2 images, 1 unit, labels at the feature size (4x4: the bilinear upsampling is the identity).

    Image 0: object ``a`` on the top-left 2x2, texture ``t``; the unit fires on the bottom-right 2x2 (no overlap).
    Image 1: object ``a`` on the top-left 2x2, no texture; the unit fires exactly there.
    """
    obj = np.zeros((2, 4, 4), np.int32)
    obj[:, :2, :2] = 1
    concepts = dis.concepts_from_label_maps({"object": obj}, {"texture": np.array([1, 0])},
                                            {"object": ["a"], "texture": ["t"]})
    acts = np.zeros((2, 4, 4, 1), np.float32)
    acts[0, 2:, 2:] = 1
    acts[1, :2, :2] = 1
    return concepts, acts, dis.Thresholds(np.array([0.5], np.float32), np.array([False]))


def test_category_rules_differ_where_the_active_region_misses_the_category():
    concepts, acts, th = _hand_case()
    paper = dis.iou(dis.tally([acts], concepts, th, 2), concepts)
    ndl = dis.iou(dis.tally([acts], concepts, th, 2, category_rule="netdissect"), concepts)
    # object a: I = 4, G = 8. Paper: image 0 carries an object, so A = 4 + 4 -> 4 / (8 + 8 - 4) = 1/3.
    # NetDissect-Lite: image 0's active pixels meet no object label, so A = 4 -> 4 / (4 + 8 - 4) = 1/2.
    np.testing.assert_allclose(paper[0, 0], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(ndl[0, 0], 1 / 2, rtol=1e-6)
    # texture t (image-level, image 0 only): both rules count image 0 (an image-level label meets every active
    # pixel): I = 4, G = 16, A = 4 -> 1/4.
    np.testing.assert_allclose(paper[0, 1], 1 / 4, rtol=1e-6)
    np.testing.assert_allclose(ndl[0, 1], 1 / 4, rtol=1e-6)
    table, _ = dis.dissect(lambda: iter([acts]), concepts, 2, quantile=0.28, category_rule="netdissect")  # T = 0
    np.testing.assert_allclose(table[0], [1 / 2, 1 / 4], rtol=1e-6)


def _netdissect_lite_iou(acts, concepts, th):
    """NetDissect-Lite's ``tally_job`` loop (per image, per unit), in NumPy, on ``jinterp``'s label form."""
    n, h, w, u = acts.shape
    sh, sw = concepts.pixel_labels.shape[2:]
    rh, rw = dis._bilinear_matrix(h, sh), dis._bilinear_matrix(w, sw)
    num, cats = concepts.num_concepts + 1, len(concepts.categories)
    labelcat = np.eye(cats)[concepts.category_of]  # (L+1, G): one-hot primary category
    both, units_cat, labels = np.zeros((u, num)), np.zeros((u, cats)), np.zeros(num)
    for i in range(n):
        pixels = concepts.pixel_labels[i]                       # (P, sh, sw)
        scalars = [s for s in concepts.image_labels[i] if s > 0]
        for s in scalars:
            labels[s] += sh * sw
        lab = np.bincount(pixels.ravel(), minlength=num)
        lab[0] = 0
        labels += lab
        for k in range(u):
            mask = np.einsum("Hh,hw,Ww->HW", rh, acts[i, :, :, k].astype(np.float64), rw) > th[k]
            bt = np.bincount(pixels[:, mask].ravel(), minlength=num)
            bt[0] = 0
            cat = bt @ labelcat
            both[k] += bt
            for s in scalars:
                cat = cat + labelcat[s]
                both[k, s] += mask.sum()
            units_cat[k] += mask.sum() * (cat > 0)
    act = units_cat[:, concepts.category_of]
    return (both / np.maximum(act + labels - both, 1e-10))[:, 1:]


def test_netdissect_rule_matches_a_netdissect_lite_style_loop_on_broden(tmp_path):
    write_broden_hard(tmp_path, n=8, n_train=8)
    concepts = broden_concepts(read_broden(tmp_path, "all"), size=(8, 8))
    acts = _acts(8, 4, 5, seed=3)
    th = dis.quantile_thresholds(_batches(acts, 4), 8 * 16, 0.2)
    ndl = dis.iou(dis.tally(_batches(acts, 4), concepts, th, 4, max_labels=32, category_rule="netdissect"), concepts)
    paper = dis.iou(dis.tally(_batches(acts, 4), concepts, th, 4, max_labels=32), concepts)
    np.testing.assert_allclose(ndl, _netdissect_lite_iou(acts, concepts, th.value), rtol=1e-5, atol=1e-7)
    # The NetDissect-Lite denominator counts fewer images, never more: its IoU is never lower, and here differs.
    assert np.all(ndl >= paper - 1e-7) and np.abs(ndl - paper).max() > 1e-3


# ---------------------------------------------------------------------------------------- jinterp basis on Broden
@pytest.fixture(scope="module")
def broden_run(tmp_path_factory):
    from jinterp.methods.basis import ibd
    from jinterp.methods.basis.config import BasisConfig

    root = tmp_path_factory.mktemp("broden")
    write_broden_hard(root, n=14, ih=32, sh=16, n_train=8, seed=4)
    # 7 classes, while the Broden folder's "classes" are its 3 scene codes (-, beach, forest): a network trained on
    # another label set (Places365 for Broden) is dissected as it is
    model = backbones.create("convnet", 7, widths=(4, 8, 8))
    variables = backbones.init(model, jax.random.key(0), (32, 32, 3))
    weights = tmp_path_factory.mktemp("w") / "params.npz"
    torch_import.save_variables(weights, variables, {"arch": "convnet", "num_classes": 7,
                                                     "config": {"widths": [4, 8, 8]}})
    cfg = BasisConfig(weights=str(weights), data=f"broden:{root}:lazy=1", layer="relu2", methods=("natural", "ibd"),
                      n_train=0, n_test=0, batch_size=4, fit_pixels=500, quantile=0.05, figure_directions=1,
                      figure_images=1,
                      ibd=ibd.IBDConfig(epochs=2, max_positives=50, min_positives=2))
    return root, model, variables, cfg


def _basis(cfg, workdir):
    from jinterp.methods.basis import program

    res = program.run(cfg, workdir, progress=False)
    return res, dict(np.load(workdir / "bases.npz"))


def test_basis_on_broden_end_to_end_streamed_equals_one_chunk(broden_run, tmp_path):
    import dataclasses

    root, model, variables, cfg = broden_run
    streamed, z = _basis(dataclasses.replace(cfg, label_chunk=4), tmp_path / "chunks")  # 2 train, 2 test chunks
    whole, z1 = _basis(dataclasses.replace(cfg, label_chunk=10_000), tmp_path / "one")  # every label at once
    assert streamed["bases"] == whole["bases"]
    for k in z:
        np.testing.assert_array_equal(z[k], z1[k], k)

    # broden_concepts' labels: names merged across categories ("ring" is one concept), every plane.
    train, test = read_broden(root, "train"), read_broden(root, "test")
    assert (streamed["n_train"], streamed["n_test"]) == (8, 6)
    concepts = broden_concepts(test, size=(16, 16))
    assert concepts.names.count("ring") == 1 and streamed["concepts"] == concepts.num_concepts
    # The natural basis' test IoUs, recomputed from the saved thresholds on the in-memory test split.
    feats = [o["relu2"] for o in iter_features(model, variables, test.images, ["relu2"], 4, preprocess="convnet")]
    th = dis.Thresholds(z["natural@q_thresholds"], np.zeros(8, bool))
    table = dis.iou(dis.tally(feats, concepts, th, 4, max_labels=64), concepts)
    feats_tr = [o["relu2"] for o in iter_features(model, variables, train.images, ["relu2"], 4, preprocess="convnet")]
    table_tr = dis.iou(dis.tally(feats_tr, broden_concepts(train, size=(16, 16)), th, 4, max_labels=64), concepts)
    best = dis.label_units(table_tr).best_concept
    np.testing.assert_allclose(z["natural@q_iou"], table[np.arange(8), best], rtol=1e-6, atol=1e-7)
    assert z["natural@q_iou"].max() > 0.02  # units meet concepts: not a comparison of zeros
    assert list(z["natural@q_labels"]) == [concepts.names[1:][b] for b in best]


def test_basis_category_rule_from_the_config_and_the_cli(broden_run, tmp_path, monkeypatch):
    import argparse
    import dataclasses

    from jinterp.methods.basis import cli, program

    _, _, _, cfg = broden_run
    paper, _ = _basis(dataclasses.replace(cfg, methods=("natural",)), tmp_path / "paper")
    ndl, _ = _basis(dataclasses.replace(cfg, methods=("natural",), category_rule="netdissect"), tmp_path / "ndl")
    assert ndl["config"]["category_rule"] == "netdissect"
    assert ndl["bases"]["natural@q"]["S1"] != paper["bases"]["natural@q"]["S1"]
    with pytest.raises(ConfigError, match="category_rule='ndl' unknown"):
        dataclasses.replace(cfg, category_rule="ndl").validate()
    # --category-rule reaches the config the program runs with
    seen = []
    monkeypatch.setattr(program, "run", lambda c, *a, **k: seen.append(c) or {
        "arch": "convnet", "layer": c.layer, "bases": {}, "wall_times_s": {"total_s": 0.0}})
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--category-rule", "netdissect"])
    args.config, args.overrides, args.workdir = "tiny", [], str(tmp_path / "cli")
    assert cli.run(args) == 0 and seen[0].category_rule == "netdissect"
