"""``jinterp basis`` end to end: bases of one layer's feature space, scored with Network Dissection.

data (with concept masks) → backbone → the layer's features, streamed → bases → dissection → results + figures.

Bases compared (spec ``uibe_and_metrics.md`` §2–4):

* ``natural`` — the layer's own units (raw channels);
* ``random``  — a Haar-random rotation of the standardised feature space (NetDissect's rotation baseline);
* ``uibe``    — the unsupervised interpretable basis (fitted on train-split pixels, no labels);
* ``ibd``     — supervised IBD concept classifiers, one per concept (train-split masks at the feature grid).
* ``random@rate`` — (with ``random`` and ``uibe``) as many random directions as UIBE's, thresholded at UIBE@own's
  mean firing rate (issue #20: the own rule fires far more often than NetDissect's quantile, and S¹ grows with it).

Every row reports its measured firing rate (share of positions strictly above threshold) on train and test, the
categories of its directions' labels (``labels_by_category``, every live direction, detector or not), and
``verdicts`` says in words whether UIBE's and IBD's S¹/S² beat the natural and random bases. ``uibe@own`` also
carries the UIBE trainer, its first and last epoch losses and (augmented Lagrangian) the final multipliers.

Each basis is dissected with NetDissect's per-direction top-``quantile`` thresholds (``@q`` rows); UIBE and IBD are
also dissected with their own decision rule (``@own``: UIBE ``Qᵀx̃ > b·M``, IBD ``wᵀx + b > 0``). Labels come from
the train split, IoUs for S¹/S² and detector counts from the test split. All bases are projected on the fly per
image batch (one unit axis holding every basis), so no data-set-sized activation array is ever held: the
backbone is re-run for each pass (pixel sample for fitting, thresholds, train tally, test tally). Concept labels
are built ``label_chunk`` images at a time beside the stream (:func:`jinterp.metrics.dissection.tally_chunked`), so
no data-set-sized label array is held either; ``category_rule`` picks the IoU denominator's category rule
(``"paper"`` or NetDissect-Lite's ``"netdissect"``, spec ``uibe_and_metrics.md`` §4.1).

Writes ``<workdir>/results.json``, ``<workdir>/bases.npz`` (directions, thresholds, labels) and figures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import backbones, data
from jinterp.core import features
from jinterp.core.run import Run, backbone_stage, check_weights_fit, data_fingerprint, user_model_stage
from jinterp.data.lazy import is_lazy
from jinterp.errors import ConfigError, DataError, LayerError
from jinterp.methods.basis import ibd, uibe
from jinterp.methods.basis.config import BasisConfig
from jinterp.metrics import baselines
from jinterp.metrics import dissection as dis
from jinterp.models.given import with_model


def _load_backbone(cfg: BasisConfig, train_ds, r: Run, progress: bool):
    """Stage ``backbone``: ``cfg.weights``, or ``cfg.backbone`` trained into ``<workdir>/backbone``, or the user's
    ``cfg.model`` (``info``: its ``normalization`` and ``layer_names``)."""
    if cfg.model:
        model, variables, minfo, info = user_model_stage(r, model=cfg.model, weights=cfg.weights,
                                                         image_shape=train_ds.image_shape, data_spec=cfg.data)
        return model, variables, {**info, "layer_names": minfo.layer_names}
    bcfg = dataclasses.replace(cfg.backbone, arch=cfg.arch, data=cfg.data, seed=cfg.seed)
    variables, meta, path, info = backbone_stage(r, arch=cfg.arch, weights=cfg.weights, train_cfg=bcfg,
                                                 progress=progress)
    if "backbone_test_accuracy" in info:
        info["test_accuracy"] = info.pop("backbone_test_accuracy")
    if cfg.weights:
        # Broden's "classes" are its scene codes, not what the dissected network classifies (e.g. Places365's 365):
        # dissection never reads the head, so only the image channels must fit.
        classes = None if cfg.data.startswith("broden:") else train_ds.num_classes
        check_weights_fit(path, meta, num_classes=classes, image_shape=train_ds.image_shape, data_spec=cfg.data)
    kw = {}
    if cfg.arch == "convnet":
        widths = tuple((meta.get("config") or {}).get("widths") or ()) or tuple(cfg.backbone.widths)
        kw = {"widths": widths} if widths else {}
    model = backbones.create(cfg.arch, int(meta.get("num_classes") or train_ds.num_classes), **kw)
    return model, variables, info


def _randomized(cfg: BasisConfig, model, variables: dict, binfo: dict, image_shape) -> dict:
    """``randomize_backbone``: the same architecture with re-initialized weights (Adebayo et al.'s model-randomization
    check, :func:`jinterp.metrics.baselines.randomized_weights`); marks ``binfo["randomized"]``. Else unchanged."""
    if not cfg.randomize_backbone:
        return variables
    binfo["randomized"] = True
    return baselines.randomized_weights(model, cfg.seed, image_shape)


def randomization_check(trained: dict, randomized: dict) -> dict[str, dict]:
    """Each learned basis' S¹ and S² on the trained network against the same run on a randomized one (``results``
    of a run with ``randomize_backbone``): :func:`jinterp.metrics.baselines.randomization_verdict` per score."""
    out = {}
    for key_ in ("uibe@own", "uibe@q", "ibd@own", "ibd@q", "natural@q"):
        a, b = trained.get("bases", {}).get(key_), randomized.get("bases", {}).get(key_)
        if a is None or b is None:
            continue
        for score in ("S1", "S2"):
            out[f"{key_} {score}"] = baselines.randomization_verdict(f"{key_} {score}", a[score], b[score],
                                                                     lower_is_better=False)
    return out


class _Stream:
    """Re-iterable per-batch feature maps of one layer for a data set (re-runs the backbone on every pass)."""

    def __init__(self, model, variables, ds, layer, batch_size, arch):
        self.model, self.variables, self.ds, self.layer, self.bs, self.arch = (model, variables, ds, layer,
                                                                                batch_size, arch)

    def __call__(self):
        images = self.ds.images
        if is_lazy(images):  # decode one batch at a time (np.asarray would decode the whole split)
            images = (self.ds.images[i:i + self.bs] for i in range(0, len(self.ds), self.bs))
        for out in features.iter_features(self.model, self.variables, images, [self.layer], self.bs,
                                          preprocess=self.arch):
            yield out[self.layer]


@jax.jit
def _project(feats, mean, scale, basis):
    x = (feats.astype(jnp.float32) - mean) / scale
    return jnp.einsum("bhwd,du->bhwu", x, basis, precision=jax.lax.Precision.HIGHEST)


def _sample_pixels(stream: _Stream, labels_grid_fn, max_pixels: int, n_images: int, seed: int):
    """A uniform random subset of the layer's pixels (and their feature-grid concept labels), drawn per batch."""
    rng = np.random.default_rng(seed)
    xs, ys, start = [], [], 0
    for feats in stream():
        b, h, w, d = feats.shape
        per_batch = max(1, int(round(max_pixels * b / n_images)))
        flat = feats.reshape(-1, d)
        pick = rng.choice(len(flat), min(per_batch, len(flat)), replace=False)
        xs.append(flat[pick])
        ys.append(labels_grid_fn(start, b, (h, w)).reshape(len(flat), -1)[pick])
        start += b
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def run(cfg: BasisConfig, workdir: str | Path, *, progress: bool = True, restart: bool = False,
        model: Any = None, variables: Any = None) -> dict:
    """The whole method (see the module docstring); returns and writes ``results.json``.

    Stages of the :class:`~jinterp.core.run.Run`: ``backbone`` (resumable when trained here), then ``bases``
    (fit, dissection, outputs; recomputed whenever its fingerprint changes).

    ``model``, ``variables``: a model passed in Python instead of ``cfg.model``/``cfg.arch`` (a converted
    ``(model, variables)`` pair, a Linen module and its variables, an NNX or PyTorch module); it runs through the
    same stage as ``--model`` and its digest is in every stage's fingerprint (:mod:`jinterp.models.given`).
    """
    cfg = with_model(cfg, model, variables)
    cfg.validate()
    with Run(workdir, cfg, method="basis", restart=restart) as r:
        return _run(cfg, r, progress)


def _run(cfg: BasisConfig, rn: Run, progress: bool) -> dict:
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    workdir = rn.workdir

    train_ds, test_ds = data.load(cfg.data, "train"), data.load(cfg.data, "test")
    if cfg.n_train:
        train_ds = train_ds.take(np.arange(min(cfg.n_train, len(train_ds))))
    if cfg.n_test:
        test_ds = test_ds.take(np.arange(min(cfg.n_test, len(test_ds))))
    if not train_ds.masks:
        raise DataError(f"{cfg.data} carries no concept masks; dissection needs a data set with concept "
                        "annotations (synthparts or broden:PATH).")
    # Concept labels are built per chunk of images while streaming (dis.tally_chunked), never for a whole split;
    # c_train / c_test hold one image's labels, for the names and categories every chunk shares.
    labels_train, labels_test = _concept_labels(cfg, train_ds), _concept_labels(cfg, test_ds)
    c_train, c_test = labels_train(0, 1), labels_test(0, 1)
    if cfg.data.startswith("broden:") and list(c_train.names) != list(c_test.names):
        raise DataError(f"{cfg.data}: the train and test splits give different concept lists; both splits must "
                        "come from one Broden directory (one label table).")
    names = c_train.names[1:]

    model, variables, binfo = _load_backbone(cfg, train_ds, rn, progress)
    variables = _randomized(cfg, model, variables, binfo, train_ds.image_shape)
    times["backbone_s"] = time.perf_counter() - t0
    stage = rn.stage("bases", fields=_as_dict(cfg), inputs={"backbone": rn.upstream("backbone"),
                                                            "data": data_fingerprint(cfg.data)},
                     paths=["bases.npz", "figures", "results.json"])
    (workdir / "figures").mkdir(parents=True, exist_ok=True)
    if cfg.model:  # a user model: its module paths, the nearest match named; its input scaling
        backbones.check_layers(binfo.pop("layer_names"), cfg.layer)
        preprocess = binfo["normalization"]
    else:
        if cfg.layer not in backbones.layer_names(cfg.arch):
            raise LayerError(f"unknown layer {cfg.layer!r} for {cfg.arch}; valid: {backbones.layer_names(cfg.arch)}")
        preprocess = cfg.arch
    tr_stream = _Stream(model, variables, train_ds, cfg.layer, cfg.batch_size, preprocess)
    te_stream = _Stream(model, variables, test_ds, cfg.layer, cfg.batch_size, preprocess)

    # ---- pixel sample for fitting (UIBE: features only; IBD: + concept labels on the feature grid)
    t = time.perf_counter()
    grid_labels = lambda s, b, hw: dis.downsample_labels(labels_train(s, s + b), hw)  # noqa: E731
    px, py = _sample_pixels(tr_stream, grid_labels, cfg.fit_pixels, len(train_ds), cfg.seed)
    dim = px.shape[1]
    times["sample_s"] = time.perf_counter() - t
    if "uibe" in cfg.methods and cfg.uibe.num_directions > dim:
        raise ConfigError(f"uibe.num_directions={cfg.uibe.num_directions} but layer {cfg.layer} has {dim} "
                          "channels; lower it or pick a wider layer.")

    # ---- bases: each (D, U) in a common affine frame x̃ = (x - mean) / scale, plus per-unit own thresholds
    key = jax.random.key(cfg.seed)
    zeros, ones = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    bases: dict[str, dict[str, Any]] = {}
    if "natural" in cfg.methods:
        bases["natural"] = dict(mean=zeros, scale=ones, basis=np.eye(dim, dtype=np.float32), own=None)
    if "random" in cfg.methods or "uibe" in cfg.methods:
        std = uibe.standardizer(px, cfg.uibe.standardization)
        mean, scale = np.asarray(std.mean), np.asarray(std.std)
    if "random" in cfg.methods:
        bases["random"] = dict(mean=mean, scale=scale, basis=uibe.random_rotation(jax.random.fold_in(key, 1), dim),
                               own=None)
    if "uibe" in cfg.methods:
        t = time.perf_counter()
        res = uibe.fit(px, dataclasses.replace(cfg.uibe, seed=cfg.seed))
        times["uibe_fit_s"] = time.perf_counter() - t
        bases["uibe"] = dict(mean=mean, scale=scale, basis=res.basis, own=uibe.detector_thresholds(res),
                             extra=dict(margin=res.margin, bias=res.bias, trainer=cfg.uibe.trainer,
                                        first_loss=res.history[0].tolist(), final_loss=res.history[-1].tolist(),
                                        multipliers=None if res.multipliers is None else res.multipliers.tolist()))
    if "ibd" in cfg.methods:
        t = time.perf_counter()
        cols = _ibd_columns(c_train, cfg.ibd.categories)
        r = ibd.fit(px, py[:, cols], dataclasses.replace(cfg.ibd, seed=cfg.seed))
        times["ibd_fit_s"] = time.perf_counter() - t
        trained = [names[cols[i]] for i in r.concepts]
        # ibd@q: the quantile rule on IBD's basis vectors (centred, unit filters, as the release uses them);
        # ibd@own: the classifiers' own decision rule wᵀx + b > 0 on the raw filters.
        bases["ibd"] = dict(mean=zeros, scale=ones, basis=r.directions, own=None, rules=[("ibd@q", None)])
        bases["ibd_own"] = dict(mean=zeros, scale=ones, basis=r.weights, own=-r.bias, rules=[("ibd@own", -r.bias)],
                                extra_key="ibd@own",
                                extra=dict(concepts=trained, mean_val_ap=float(r.val_ap.mean()),
                                           val_ap=r.val_ap.tolist(), categories=list(cfg.ibd.categories)))

    # ---- the random baseline at UIBE's firing rate (issue #20): UIBE's own rule fires far more often than the
    # quantile rule, so its S¹ is compared with random directions (as many as UIBE's) thresholded to fire as often.
    # The target is UIBE@own's mean firing rate on the fitting pixel sample; the rates measured on the whole train
    # and test splits are reported beside every basis (``firing_rate_train``/``firing_rate_val``).
    target_rate = None
    if "random" in cfg.methods and "uibe" in cfg.methods:
        u = bases["uibe"]
        target_rate = float(np.mean(((px - u["mean"]) / u["scale"]) @ u["basis"] > u["own"][None, :]))
        if 0 < target_rate < 1:
            t = time.perf_counter()
            rbasis = baselines.random_orthonormal_basis(jax.random.fold_in(key, 2), dim, u["basis"].shape[1])
            n_pos = len(train_ds) * _grid_positions(tr_stream)
            rate_th = dis.quantile_thresholds(
                (np.asarray(_project(f, mean, scale, rbasis)) for f in tr_stream()), n_pos, target_rate)
            bases["random_rate"] = dict(mean=mean, scale=scale, basis=rbasis, own=None,
                                        rules=[("random@rate", rate_th.value)])
            times["random_rate_s"] = time.perf_counter() - t

    # One unit axis for every (basis, threshold rule): the frame differs per basis, so fold it into the basis:
    # (x - m)/s @ B = x @ (B / s) - (m / s) @ B.
    cols, offs, rows = [], [], []
    for name, b in bases.items():
        eff = b["basis"] / b["scale"][:, None]
        off = (b["mean"] / b["scale"]) @ b["basis"]
        rules = b.get("rules") or ([(f"{name}@q", None)] + ([(f"{name}@own", b["own"])] if b["own"] is not None
                                                             else []))
        for key_, own in rules:
            cols.append(eff)
            offs.append(off)
            rows.append((key_, eff.shape[1], own))
    big = jnp.asarray(np.concatenate(cols, 1), jnp.float32)
    big_off = np.concatenate(offs).astype(np.float32)
    proj = lambda stream: (lambda: (np.asarray(_project(f, 0.0, 1.0, big)) - big_off for f in stream()))  # noqa: E731

    # ---- thresholds: NetDissect quantile on the train split; own rules where defined
    t = time.perf_counter()
    first = next(iter(tr_stream()))
    th = dis.quantile_thresholds(proj(tr_stream)(), len(train_ds) * first.shape[1] * first.shape[2], cfg.quantile)
    value, start = th.value.copy(), 0
    for _key, n, own in rows:
        if own is not None:
            value[start:start + n] = own
        start += n
    dead = th.dead.copy()
    thresholds = dis.Thresholds(value, dead)
    times["thresholds_s"] = time.perf_counter() - t

    # ---- tallies (train: labels, test: scores); per-image max per unit on test for the figures
    t = time.perf_counter()
    fires = {"train": [0, 0], "val": [0, 0]}  # per split: (count above threshold per unit, positions)
    img_max = []

    def counted(batches, split):
        for a in batches:
            fires[split][0] = fires[split][0] + np.asarray(_count_above(a, thresholds.value))
            fires[split][1] += int(np.prod(a.shape[:-1]))
            if split == "val":
                img_max.append(a.max((1, 2)))
            yield a

    tallies = {split: dis.tally_chunked(counted(proj(stream)(), split), labels, len(ds), thresholds,
                                        cfg.batch_size, chunk=cfg.label_chunk, max_labels=64,
                                        category_rule=cfg.category_rule)[0]
               for split, stream, labels, ds in (("train", tr_stream, labels_train, train_ds),
                                                 ("val", te_stream, labels_test, test_ds))}
    iou_tr, iou_te = dis.iou(tallies["train"], c_train), dis.iou(tallies["val"], c_test)
    # the dissection's strict ``>``; a dead unit never fires
    rate_of = {s: np.where(dead, 0.0, c / max(n, 1)) for s, (c, n) in fires.items()}
    img_max = np.concatenate(img_max)
    times["tally_s"] = time.perf_counter() - t

    # ---- scores per basis and rule
    results: dict[str, Any] = {}
    start = 0
    per_unit: dict[str, dict] = {}
    for key_, n, _ in rows:
        sl = slice(start, start + n)
        start += n
        s1, s2 = dis.s1_s2(iou_tr[sl], iou_te[sl])
        lab_tr = dis.label_units(iou_tr[sl], dead[sl])
        phi = iou_te[sl][np.arange(n), lab_tr.best_concept]
        det = phi > dis.IOU_DETECTOR_THRESHOLD
        cat_of = lambda c: c_train.categories[int(c_train.category_of[c + 1])]  # noqa: E731
        cat_counts: dict[str, int] = {}
        for c in lab_tr.best_concept[det]:
            cat_counts[cat_of(c)] = cat_counts.get(cat_of(c), 0) + 1
        # every live direction's train label by category, detector or not (issue #20: UIBE's directions drift to
        # whole-image textures as it trains longer)
        label_counts: dict[str, int] = {}
        for c in lab_tr.best_concept[~dead[sl]]:
            label_counts[cat_of(c)] = label_counts.get(cat_of(c), 0) + 1
        results[key_] = dict(directions=n, S1=s1, S2=s2, detectors=int(det.sum()),
                             unique_detectors=int(len(np.unique(lab_tr.best_concept[det]))),
                             S1_per_direction=s1 / n, dead=int(dead[sl].sum()), detectors_by_category=cat_counts,
                             labels_by_category=label_counts,
                             firing_rate_train=float(rate_of["train"][sl].mean()),
                             firing_rate_val=float(rate_of["val"][sl].mean()))
        per_unit[key_] = dict(label=lab_tr.best_concept, iou=phi, slice=sl)
    if "random@rate" in results:
        results["random@rate"]["target_rate"] = target_rate
    verdicts = _verdicts(results)
    for name, b in bases.items():
        if "extra" in b:
            key_ = b.get("extra_key") or (f"{name}@own" if b["own"] is not None else f"{name}@q")
            results.setdefault(key_, {}).update(b["extra"])

    # ---- save bases, labels, figures
    from jinterp.core.run import write_file  # process 0 writes, every process waits

    write_file(workdir / "bases.npz", lambda tmp: np.savez(
        tmp, **{f"{k}_basis": b["basis"] for k, b in bases.items()},
        **{f"{k}_mean": b["mean"] for k, b in bases.items()},
        **{f"{k}_scale": b["scale"] for k, b in bases.items()},
        **{f"{k}_thresholds": thresholds.value[v["slice"]] for k, v in per_unit.items()},
        **{f"{k}_labels": np.asarray([names[i] for i in v["label"]]) for k, v in per_unit.items()},
        **{f"{k}_iou": v["iou"] for k, v in per_unit.items()}))
    t = time.perf_counter()
    figs = {}
    try:
        from jinterp.report.figures import basis as figlib

        for key_ in [k for k in ("uibe@own", "ibd@own", "natural@q", "random@q") if k in per_unit]:
            v = per_unit[key_]
            top = np.argsort(-v["iou"])[: cfg.figure_directions]
            sl = v["slice"]
            units = np.arange(sl.start, sl.stop)[top]
            imgs = np.argsort(-img_max[:, units], axis=0)[: cfg.figure_images].T          # (dirs, images)
            sel = np.unique(imgs)
            maps = np.asarray(_project(next(features.iter_features(
                model, variables, test_ds.images[sel], [cfg.layer], max(len(sel), 1),
                preprocess=preprocess))[cfg.layer],
                0.0, 1.0, big)) - big_off
            pos = {int(s): i for i, s in enumerate(sel)}
            rows_ = []
            for d, u in enumerate(units):
                rows_.append([(test_ds.images[i], maps[pos[int(i)], :, :, u] > thresholds.value[u]) for i in imgs[d]])
            labels = [f"#{top[d]} {names[v['label'][top[d]]]} ({v['iou'][top[d]]:.2f})" for d in range(len(top))]
            path = workdir / "figures" / f"directions_{key_.replace('@', '_')}.png"
            figlib.direction_grid(rows_, labels, path, title=f"{cfg.arch} {cfg.layer}: {key_} top directions")
            figs[key_] = str(path)
        path = workdir / "figures" / "scores.png"
        figlib.score_bars(results, path, title=f"{cfg.arch} {cfg.layer} on {test_ds.name}")
        figs["scores"] = str(path)
    except ImportError:  # pragma: no cover - matplotlib missing
        pass
    times["figures_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    out = dict(arch=cfg.model or cfg.arch, layer=cfg.layer, data=cfg.data, channels=dim, n_train=len(train_ds),
               n_test=len(test_ds), fit_pixels=int(len(px)), concepts=len(names), backbone=binfo, bases=results,
               randomize_backbone=cfg.randomize_backbone,
               verdicts=verdicts,
               figures=figs, wall_times_s=times, config=_as_dict(cfg))
    rn.write_json("results.json", out, default=_json_default)
    stage.finish()
    return out


def _concept_labels(cfg: BasisConfig, ds) -> Callable[[int, int], dis.ConceptSet]:
    """``(start, stop) -> ConceptSet`` of images ``start..stop-1`` of ``ds`` at the label resolution.

    ``broden:`` data: NetDissect-Lite's labels (every plane, names merged across categories) at the segmentation
    size of index.csv; other data: the label maps of ``ds`` at ``seg_scale`` of the image size. Only the requested
    images are decoded (a lazy ``broden:PATH:lazy=1`` set reads their mask PNGs then).
    """
    cats = list(cfg.categories) or None
    if cfg.data.startswith("broden:"):
        seg_size = tuple(ds.meta["segmentation_size"])
        return lambda start, stop: data.broden_concepts(ds.take(np.arange(start, stop)), cats, size=seg_size)
    h_img, w_img = ds.image_shape[:2]
    seg = (max(1, int(round(h_img * cfg.seg_scale))), max(1, int(round(w_img * cfg.seg_scale))))
    return lambda start, stop: dis.concepts_from_dataset(ds.take(np.arange(start, stop)), cats, size=seg)


def _ibd_columns(concepts: dis.ConceptSet, categories) -> np.ndarray:
    """Label columns (concept index − 1) whose category is in ``categories`` (all when empty)."""
    cat_of = [concepts.categories[int(c)] for c in concepts.category_of[1:]]
    if not categories:
        return np.arange(len(cat_of))
    cols = np.flatnonzero([c in categories for c in cat_of])
    if cols.size == 0:
        raise ConfigError(f"ibd.categories={list(categories)} matches no concept category of this data set "
                          f"({sorted(set(cat_of))}); set ibd.categories to some of those, or () for all.")
    return cols


@jax.jit
def _count_above(acts, thresholds):
    return (acts > thresholds).reshape(-1, acts.shape[-1]).sum(0)


def _grid_positions(stream: _Stream) -> int:
    """h·w of the layer's feature grid (one batch through the backbone)."""
    first = next(iter(stream()))
    return int(first.shape[1] * first.shape[2])


def _verdicts(results: dict) -> dict[str, str]:
    """Each learned basis' S¹ and S² against the natural basis and the rate-matched random basis, in words.

    S¹ sums over directions, so a baseline with as many directions (random@rate has UIBE's count) is the fair one;
    the natural basis (all channels, quantile rule) is the usual NetDissect reference.
    """
    base_keys = [k for k in ("natural@q", "random@rate", "random@q") if k in results]
    out = {}
    for key_ in [k for k in ("uibe@own", "uibe@q", "ibd@own", "ibd@q") if k in results]:
        for score in ("S1", "S2"):
            base = {k: results[k][score] for k in base_keys}
            if not base:
                continue
            v = baselines.verdict(f"{key_} {score}", results[key_][score], base, lower_is_better=False,
                                  names={"natural@q": "the natural basis (raw channels, NetDissect quantile)",
                                         "random@rate": "a random basis at UIBE@own's firing rate",
                                         "random@q": "a random rotation (NetDissect quantile)"})
            out[f"{key_} {score}"] = v["text"]
    return out


def _as_dict(cfg) -> dict:
    from jinterp.core import config as cfglib

    try:
        return cfglib.to_dict(cfg)
    except Exception:  # noqa: BLE001 - informational only
        return dataclasses.asdict(cfg)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
