"""The explanatory graph end to end: data → backbone → normalized maps → graph (top-down EM) → metrics → figures.

``run(cfg, workdir)`` writes ``<workdir>/graph.npz`` (per layer: node centers, scales, parents, records),
``<workdir>/results.json`` (instability of nodes vs raw filters in both code variants, few-shot part
localization vs raw filters, wall times, figure paths) and ``<workdir>/figures/*.png``.

Data protocol on synthparts (mirrors the released code's CUB/Pascal-Part setup, spec §A2.3, §A9): the graph
explains one category (``cfg.category``); its images are cropped to the object's bounding box (from the ``object``
mask) and resized to ``image_size``, as the released code crops annotated boxes; landmarks = the category's part
centers (synthparts slots), moved into the crop frame. Negatives for the feature std are crops of the other
categories' objects (the released code uses 1000 generic ImageNet images). Raw filters are scored like the
released ``computeStability_raw.m``: position = argmax cell of the normalized map, score = its value.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from jinterp.core.run import Run, backbone_stage, data_fingerprint, user_model_stage
from jinterp.errors import ConfigError, DataError
from jinterp.methods.graph.config import GraphConfig
from jinterp.models.given import with_model

GRAPH_FILE = "graph.npz"
RESULTS_FILE = "results.json"
# What :func:`evaluate` reports; named in results.json when the data cannot give them (no landmarks).
METRIC_NAMES = ("instability_graph_nodes", "instability_graph_filters", "instability_icnn_nodes",
                "instability_icnn_filters", "fewshot_normalized_distance_nodes", "fewshot_normalized_distance_filters")


# ----------------------------------------------------------------------------------------------------------- data
def crop_to_boxes(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Bilinear crop-and-resize of uint8 (N, H, W, C) images to (N, size, size, C); boxes (N, 4) = (x0, y0, x1, y1)
    in the continuous pixel frame (pixel j spans [j, j+1))."""
    n, h, w, c = images.shape
    t = (np.arange(size) + 0.5) / size
    ys = boxes[:, 1, None] + t[None] * (boxes[:, 3] - boxes[:, 1])[:, None] - 0.5  # (N, size) source row coords
    xs = boxes[:, 0, None] + t[None] * (boxes[:, 2] - boxes[:, 0])[:, None] - 0.5
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    idx = np.arange(n)[:, None, None]
    img = images.astype(np.float32)
    top = img[idx, y0[:, :, None], x0[:, None, :]] * (1 - fx) + img[idx, y0[:, :, None], x1[:, None, :]] * fx
    bot = img[idx, y1[:, :, None], x0[:, None, :]] * (1 - fx) + img[idx, y1[:, :, None], x1[:, None, :]] * fx
    return np.clip(np.round(top * (1 - fy) + bot * fy), 0, 255).astype(np.uint8)


def object_boxes(object_mask: np.ndarray) -> np.ndarray:
    """(N, 4) bounding boxes (x0, y0, x1, y1) of the non-zero pixels of (N, H, W) masks (full frame if empty)."""
    n, h, w = object_mask.shape
    on = object_mask > 0
    rows, cols = on.any(2), on.any(1)
    boxes = np.zeros((n, 4), np.float64)
    for axis, (lo, hi), extent in ((cols, (0, 2), w), (rows, (1, 3), h)):
        any_ = axis.any(1)
        first = np.where(any_, axis.argmax(1), 0)
        last = np.where(any_, extent - 1 - axis[:, ::-1].argmax(1), extent - 1)
        boxes[:, lo], boxes[:, hi] = first, last + 1
    return boxes


def _synth_spec(cfg: GraphConfig, n: int) -> str:
    kind, _, arg = cfg.data.partition(":")
    opts = [o for o in arg.split(",") if o.strip()]
    given = {o.split("=", 1)[0].strip() for o in opts}
    opts += [f"{k}={v}" for k, v in (("size", cfg.image_size), ("n_test", n)) if k not in given]
    return "synthparts:" + ",".join(opts)


def load_images(cfg: GraphConfig) -> dict[str, Any]:
    """Positive images (+ landmarks in the crop frame) and negative images, both uint8 at ``image_size``."""
    from jinterp import data

    synth = cfg.data.partition(":")[0] == "synthparts"
    if synth:
        k = 6
        n = int(math.ceil(max(cfg.num_images * k * 1.25, cfg.num_negatives * k / (k - 1) * 1.25)))
        ds = data.load(_synth_spec(cfg, n), "test")
    else:
        ds = data.load(cfg.data, "test")
    labels = ds.labels
    if cfg.category >= 0:
        if cfg.category >= ds.num_classes:
            raise ConfigError(f"graph: category {cfg.category} but the data has {ds.num_classes} classes")
        pos_idx, neg_idx = np.flatnonzero(labels == cfg.category), np.flatnonzero(labels != cfg.category)
    else:
        pos_idx = neg_idx = np.arange(len(labels))
    if len(pos_idx) < 2 or len(neg_idx) < 2:
        raise DataError(f"graph: {ds.name} has too few images of category {cfg.category} or of the others")
    out: dict[str, Any] = {"name": ds.name, "category": cfg.category,
                           "category_name": ds.class_names[cfg.category] if cfg.category >= 0 else "all",
                           "warnings": []}
    if len(pos_idx) < cfg.num_images:  # never a silent shortfall: say how many and why
        out["warnings"].append(
            f"graph: {len(pos_idx)} usable images instead of the {cfg.num_images} requested: {ds.name} has only "
            f"{len(pos_idx)} test images of category {out['category_name']!r} ({len(labels)} in all); use data with "
            "more images of it, or lower num_images")
    pos_idx, neg_idx = pos_idx[:cfg.num_images], neg_idx[-cfg.num_negatives:]
    images = np.asarray(ds.images)
    lm = vis = None
    if ds.landmarks is not None:
        lm, vis = np.asarray(ds.landmarks, np.float64)[pos_idx], np.asarray(ds.landmark_visible)[pos_idx]
    if cfg.crop and "object" in ds.masks:
        boxes = object_boxes(np.asarray(ds.masks["object"]))
        pos_img = crop_to_boxes(images[pos_idx], boxes[pos_idx], cfg.image_size)
        neg_img = crop_to_boxes(images[neg_idx], boxes[neg_idx], cfg.image_size)
        if lm is not None:
            b = boxes[pos_idx]
            scale = np.stack([cfg.image_size / (b[:, 2] - b[:, 0]), cfg.image_size / (b[:, 3] - b[:, 1])], -1)
            lm = (lm - b[:, None, :2]) * scale[:, None, :]
            vis = vis & np.all((lm >= 0) & (lm < cfg.image_size), -1)
    else:
        if images.shape[1] != cfg.image_size:
            raise ConfigError(f"graph: images are {images.shape[1]} px but image_size={cfg.image_size}; set "
                              "image_size to match or use crop=true with object masks")
        pos_img, neg_img = images[pos_idx], images[neg_idx]
    if lm is not None:
        keep = vis.any(0)  # the category's parts (slots it lacks are never visible)
        lm, vis = lm[:, keep], vis[:, keep]
    out.update(positives=pos_img, negatives=neg_img, landmarks=lm, visible=vis)
    return out


# ------------------------------------------------------------------------------------------------------- backbone
def load_backbone(cfg: GraphConfig, r: Run, progress: bool, image_shape: tuple[int, ...] | None = None):
    """(model, variables, preprocess name, path): stage ``backbone``; trains ``TrainBackboneConfig.tiny()`` into
    ``<workdir>/backbone`` first when ``weights`` is "". With ``cfg.model`` the user's model on images of
    ``image_shape`` (H, W, C), its layers checked in network order (:func:`check_layer_order`)."""
    from jinterp import backbones
    from jinterp.core.config import TrainBackboneConfig

    if cfg.model:
        model, variables, minfo, info = user_model_stage(r, model=cfg.model, weights=cfg.weights,
                                                         image_shape=image_shape, data_spec=cfg.data)
        check_layer_order(cfg, minfo.layer_names)
        return model, variables, info["normalization"], info["weights"]

    t = TrainBackboneConfig.tiny()
    t = dataclasses.replace(t, arch=cfg.arch, data=cfg.data, image_size=cfg.image_size, seed=cfg.seed,
                            widths=t.widths if cfg.arch == "convnet" else (), steps=cfg.backbone_steps or t.steps)
    variables, meta, path, _ = backbone_stage(r, arch=cfg.arch, weights=cfg.weights, train_cfg=t, progress=progress)
    kw = backbones.arch_kwargs_from(cfg.arch, variables)  # the widths the variables have
    model = backbones.create(cfg.arch, meta.get("num_classes"), **kw)
    return model, variables, meta.get("normalization") or backbones.NORMALIZATION[cfg.arch], str(path)


def check_layer_order(cfg: GraphConfig, names: tuple[str, ...] | None = None) -> None:
    """The graph is learned top-down over layers given bottom to top: any other order is an error (a reversed
    list would build an inverted graph, parents below their children). ``names``: a user model's layers in
    forward order (default: the arch's); a user model's are known once it is loaded, so this waits for them."""
    from jinterp import backbones

    if cfg.model and names is None:
        return
    names = tuple(names) if names is not None else backbones.layer_names(cfg.arch)
    backbones.check_layers(names, cfg.layers)  # unknown names: LayerError listing the valid ones
    depth = [names.index(n) for n in cfg.layers]
    if any(b <= a for a, b in zip(depth, depth[1:], strict=False)):
        ordered = sorted(dict.fromkeys(cfg.layers), key=names.index)
        raise ConfigError(f"graph layers must be distinct and go from bottom to top, got {','.join(cfg.layers)}; "
                          f"give them in network order, e.g. --layers {','.join(ordered)}")


def raw_filter_units(maps: np.ndarray, geom) -> tuple[np.ndarray, np.ndarray]:
    """Raw filters as units: (N, C, 2) argmax positions in pixels (x, y) and (N, C) max values."""
    from jinterp.metrics.localization import argmax_positions, cells_to_pixels

    cells, scores = argmax_positions(maps)
    return cells_to_pixels(cells, geom.stride, geom.center), scores


def evaluate(layers, maps_list, lm, vis, cfg: GraphConfig) -> dict[str, Any]:
    """Instability (both variants, nodes vs raw filters) and few-shot part localization (nodes vs raw filters),
    each beside its sanity baselines (:mod:`jinterp.metrics.baselines`, issue #20): per layer and variant, units
    fixed at the image centre / at their own mean position / at random positions with the nodes' (filters') own
    scores (``instability_baselines``), and for localization the image-blind predictor (mean of the shots'
    landmarks), the centre and random positions on the same test images (``localization_baselines``). Each
    carries ``beats_baselines`` and a ``verdict`` sentence."""
    import jax

    from jinterp.metrics import baselines as B
    from jinterp.metrics import localization as loc

    size = cfg.image_size
    res: dict[str, Any] = {"per_layer": {}}
    units = {"nodes": [], "filters": []}
    root = jax.random.PRNGKey(cfg.seed)
    res["instability_baselines"] = {}
    for li, (layer, maps) in enumerate(zip(layers, maps_list, strict=True)):
        node_xy, node_s = layer.positions_px(), layer.scores()
        raw_xy, raw_s = raw_filter_units(maps, layer.geom)
        units["nodes"].append((node_xy, node_s))
        units["filters"].append((raw_xy, raw_s))
        entry = {}
        for kind, (xy, sc) in (("nodes", (node_xy, node_s)), ("filters", (raw_xy, raw_s))):
            g = loc.location_instability(xy, sc, lm, vis, size, variant="graph", top_n=cfg.stability_top_n,
                                         num_units=cfg.stability_units)
            i = loc.location_instability(xy, sc, lm, vis, size, variant="icnn", top_n=min(100, len(xy)))
            entry[kind] = {"instability_graph": g.value, "instability_icnn": i.value,
                           "undefined_graph": g.num_undefined, "units": int(xy.shape[1])}
        res["per_layer"][layer.name] = entry
        base: dict[str, Any] = {}
        for ki, kind in enumerate(("nodes", "filters")):
            xy, sc = units[kind][-1]
            for vi, (variant, kw) in enumerate((
                    ("graph", {"top_n": cfg.stability_top_n, "num_units": cfg.stability_units}),
                    ("icnn", {"top_n": min(100, len(xy))}))):
                vals = B.instability_baselines(xy, sc, lm, vis, size, jax.random.fold_in(root, 100 * li + 10 * ki + vi),
                                               variant=variant, **kw)
                summ = B.instability_summary(vals, label=f"{layer.name} {kind}: location instability ({variant} code)")
                base[f"{kind}_{variant}"] = {**{k: float(v) for k, v in vals.items()},
                                             "beats_baselines": summ["beats_baselines"], "verdict": summ["text"]}
        res["instability_baselines"][layer.name] = base
    for kind in ("nodes", "filters"):
        for variant in ("graph", "icnn"):
            vals = [res["per_layer"][ly.name][kind][f"instability_{variant}"] for ly in layers]
            res[f"instability_{variant}_{kind}"] = float(np.nanmean(vals))
    # few-shot part localization (reconstructed transfer, spec §A10 [I]); mean over parts and shot draws
    fs: dict[str, list[float]] = {"nodes": [], "filters": []}
    fs_base: dict[str, list[float]] = {"method": [], "image_blind": [], "centre": [], "random": []}
    for kind in ("nodes", "filters"):
        xy = np.concatenate([u[0] for u in units[kind]], 1)
        sc = np.concatenate([u[1] for u in units[kind]], 1)
        sc = sc / np.maximum(sc.mean(0, keepdims=True), 1e-12)  # per-unit scale, comparable across layers
        for draw in range(5):
            order = np.random.default_rng([cfg.seed, draw]).permutation(len(xy))
            for p in range(lm.shape[1]):
                shots = [i for i in order if vis[i, p]][:cfg.shots]
                test = np.setdiff1d(np.flatnonzero(vis[:, p]), shots)
                if len(shots) < cfg.shots or test.size == 0:
                    continue
                tr = loc.fit_part_transfer(xy[shots], sc[shots], lm[shots, p], None, cfg.image_size,
                                           top_t=cfg.transfer_top_t)
                pred = loc.predict_parts(tr, xy[test], sc[test])
                fs[kind].append(loc.part_localization(pred, lm[test, p], None, cfg.image_size)
                                ["normalized_distance"])
                if kind == "nodes":  # same shots, same test images: what units that know nothing score
                    vals = B.localization_baselines(pred, lm[shots, p], vis[shots, p], lm[test, p], None,
                                                    cfg.image_size, jax.random.fold_in(root, 7000 + 100 * draw + p))
                    for name in fs_base:
                        fs_base[name].append(vals[name])
    for kind in ("nodes", "filters"):
        res[f"fewshot_normalized_distance_{kind}"] = float(np.mean(fs[kind])) if fs[kind] else float("nan")
    if fs["nodes"]:
        # "method" is recomputed beside the baselines, so it equals the reported number only on the same images
        vals = {k: float(np.mean(v)) for k, v in fs_base.items()}
        summ = B.localization_summary(vals, label=f"{cfg.shots}-shot part localization of the graph nodes "
                                                  "(normalized distance)")
        res["localization_baselines"] = {**vals, "filters": res["fewshot_normalized_distance_filters"],
                                         "beats_baselines": summ["beats_baselines"], "verdict": summ["text"]}
    res["fewshot_note"] = (f"{cfg.shots}-shot, reconstructed transfer (spec A10 [I]), top {cfg.transfer_top_t} "
                           "units, mean over parts and 5 shot draws")
    return res


# ----------------------------------------------------------------------------------------------------------- run
def save_graph(path: Path, layers) -> None:
    arrays = {}
    for i, ly in enumerate(layers):
        p = f"layer{i}_"
        arrays.update({p + "coord": ly.coord, p + "sigma": ly.sigma, p + "prob_record": ly.prob_record,
                       p + "pos_record": ly.pos_record, p + "phi": ly.phi})
        if ly.parents is not None:
            arrays[p + "parents"] = ly.parents
    arrays["layer_names"] = np.array([ly.name for ly in layers])
    from jinterp.core.run import write_file  # process 0 writes, every process waits

    write_file(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def run(cfg: GraphConfig, workdir, *, progress: bool = True, restart: bool = False, model: Any = None,
        variables: Any = None) -> dict[str, Any]:
    """The whole method on ``cfg``; returns (and writes) the results dict.

    Stages of the :class:`~jinterp.core.run.Run`: ``backbone`` (resumable when trained here), then ``graph``
    (learning, metrics, outputs; recomputed whenever its fingerprint changes).

    ``model``, ``variables``: a model passed in Python instead of ``cfg.model``/``cfg.arch`` (a converted
    ``(model, variables)`` pair, a Linen module and its variables, an NNX or PyTorch module); it runs through the
    same stage as ``--model`` and its digest is in every stage's fingerprint (:mod:`jinterp.models.given`).
    """
    cfg = with_model(cfg, model, variables)
    cfg.validate()
    check_layer_order(cfg)
    with Run(workdir, cfg, method="graph", restart=restart) as r:
        return _run(cfg, r, progress)


def _run(cfg: GraphConfig, r: Run, progress: bool) -> dict[str, Any]:
    import sys

    from jinterp.core import features
    from jinterp.core.config import to_dict
    from jinterp.methods.graph.geometry import layer_geom
    from jinterp.methods.graph.learn import learn_graph
    from jinterp.methods.graph.normalization import negative_std, normalize

    t_start = time.perf_counter()
    workdir = r.workdir
    say = print if progress else (lambda *_: None)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    d = load_images(cfg)  # before the backbone: data problems show before any training
    for w in d["warnings"]:
        print(f"jinterp: warning: {w}", file=sys.stderr)
    times["data_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, variables, norm, weights_path = load_backbone(cfg, r, progress, tuple(d["positives"].shape[1:]))
    if cfg.randomize_backbone:  # Adebayo et al.'s model-randomization check: same method, untrained weights
        from jinterp.metrics.baselines import randomized_weights

        variables = randomized_weights(model, cfg.seed, d["positives"].shape[1:])
    times["backbone_s"] = time.perf_counter() - t0
    stage = r.stage("graph", fields=to_dict(cfg), inputs={"backbone": r.upstream("backbone"),
                                                          "data": data_fingerprint(cfg.data)},
                    paths=[GRAPH_FILE, RESULTS_FILE, "figures"])
    (workdir / "figures").mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    layers_names = tuple(cfg.layers)
    neg = features.extract(model, variables, d["negatives"], layers_names, batch_size=64, preprocess=norm)
    posf = features.extract(model, variables, d["positives"], layers_names, batch_size=64, preprocess=norm)
    maps_list = [normalize(posf[name], negative_std([neg[name]])) for name in layers_names]
    del neg, posf
    times["features_s"] = time.perf_counter() - t0
    geoms = [layer_geom(cfg, i, m.shape[1:], cfg.image_size) for i, m in enumerate(maps_list)]
    say(f"graph: {len(d['positives'])} images of {d['category_name']!r}, layers "
        + ", ".join(f"{n} {g.h}x{g.w}x{g.c} K={g.k}" for n, g in zip(layers_names, geoms, strict=True)))

    t0 = time.perf_counter()
    layers = learn_graph(maps_list, geoms, cfg, progress=say if progress else None)
    times["learn_s"] = time.perf_counter() - t0
    save_graph(workdir / GRAPH_FILE, layers)

    results: dict[str, Any] = {
        "method": "graph", "config": to_dict(cfg), "weights": weights_path, "data": d["name"],
        "category": d["category_name"], "num_images": int(len(d["positives"])),
        "randomize_backbone": cfg.randomize_backbone,
        "layers": [{"name": ly.name, "map": [ly.geom.h, ly.geom.w, ly.geom.c], "nodes_per_filter": ly.geom.k,
                    "nodes": ly.geom.num_nodes, "edges": int(len(ly.edges())),
                    "mean_sigma": float(ly.sigma.mean()), "final_mean_shift": ly.history[-1]["mean_shift"]}
                   for ly in layers],
        "graph_file": str(workdir / GRAPH_FILE),
    }
    results["warnings"] = list(d["warnings"])
    if d["landmarks"] is not None and d["landmarks"].shape[1] > 0:
        t0 = time.perf_counter()
        results["metrics"] = evaluate(layers, maps_list, d["landmarks"], d["visible"], cfg)
        times["evaluate_s"] = time.perf_counter() - t0
    else:  # named, never silently dropped
        why = (f"{d['name']} has no part landmarks" if d["landmarks"] is None
               else f"no part of category {d['category_name']!r} is visible in the images")
        results["metrics_not_computed"] = {"metrics": list(METRIC_NAMES), "reason": why}
        msg = f"graph: metrics not computed ({', '.join(METRIC_NAMES)}): {why}"
        results["warnings"].append(msg)
        print(f"jinterp: warning: {msg}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        from jinterp.report.figures import graph as gfig

        results["figures"] = gfig.save_all(workdir / "figures", d["positives"], layers, d["landmarks"],
                                           d["visible"])
    except Exception as e:  # a figure must never lose the results
        results["figures_error"] = f"{type(e).__name__}: {e}"
    times["figures_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - t_start
    results["times"] = times
    r.write_json(RESULTS_FILE, results, default=float)
    stage.finish()
    return results


def summary(results: dict[str, Any]) -> str:
    m = results.get("metrics", {})
    if not m:
        nodes = sum(ly["nodes"] for ly in results["layers"])
        return f"graph: {nodes} nodes learned ({results['times']['total_s']:.0f} s)"
    return (f"graph ({results['category']}): instability nodes {m['instability_graph_nodes']:.4f} vs filters "
            f"{m['instability_graph_filters']:.4f} (graph code), {m['instability_icnn_nodes']:.4f} vs "
            f"{m['instability_icnn_filters']:.4f} (ICNN code); few-shot normalized distance nodes "
            f"{m['fewshot_normalized_distance_nodes']:.4f} vs filters {m['fewshot_normalized_distance_filters']:.4f}"
            f" ({results['times']['total_s']:.0f} s)")
