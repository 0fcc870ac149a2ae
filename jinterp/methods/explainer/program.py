"""The explainer program: performer → explainer training → evaluation → figures → ``results.json``.

    from jinterp.methods.explainer import ExplainerConfig, run
    res = run(ExplainerConfig.tiny(), "runs/explainer")

Steps: load data (synthparts by default); load the performer (``weights``) or train one into
``<workdir>/backbone``; train the explainer on the performer's (frozen) ``layer`` → ``target`` features with
checkpoints/resume in ``<workdir>/checkpoints``; evaluate on the test split (spec C4): relative
reconstruction error, performer accuracy with ``target`` replaced by the reconstruction (and the drop), the
distribution of p, location instability (ICNN variant, per synthparts category, landmarks = part centers)
of the explainer's interpretable filters vs the performer's filters at the input depth and at the target;
optionally a λ/η sweep trained as one vmapped model stack; figures under ``<workdir>/figures``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import backbones, data
from jinterp.core import loop, train, xla_options
from jinterp.core.checkpoint import Checkpointer
from jinterp.core.config import TrainBackboneConfig, apply_overrides, to_dict
from jinterp.core.run import Run, backbone_stage, check_weights_fit, data_fingerprint, user_model_stage
from jinterp.errors import ConfigError, DataError, LayerError
from jinterp.methods.explainer import model as M
from jinterp.methods.explainer.config import ExplainerConfig
from jinterp.models.given import with_model

RESULTS_FILE = "results.json"


# ------------------------------------------------------------------------------------------------ performer
def data_spec(cfg: ExplainerConfig) -> str:
    return data.with_synthparts_defaults(cfg.data, size=cfg.image_size, n_train=cfg.train_size or None,
                                         n_test=cfg.test_size or None)


def _num_classes(arch: str, variables: dict) -> int:
    head = {"convnet": "fc"}.get(arch, "linear" if arch.startswith("resnet") else "fc")
    return int(variables["params"][head]["bias"].shape[0])


def load_performer(cfg: ExplainerConfig, r: Run, num_classes: int, image_shape: tuple[int, ...],
                   progress: bool = True) -> tuple[Any, dict, dict]:
    """``(module, variables, info)``: stage ``backbone``, from ``cfg.weights`` or trained into
    ``<workdir>/backbone``, or the user's ``cfg.model`` (``info["model_info"]``: its ModelInfo)."""
    if cfg.model:
        performer, variables, minfo, binfo = user_model_stage(r, model=cfg.model, weights=cfg.weights,
                                                              image_shape=image_shape, num_classes=num_classes,
                                                              data_spec=data_spec(cfg))
        return performer, variables, {**binfo, "model_info": minfo}
    bcfg = TrainBackboneConfig.tiny() if cfg.backbone_steps else TrainBackboneConfig.paper()
    sets = [f"arch={cfg.arch}", f"data={cfg.data}", f"image_size={cfg.image_size}",
            f"train_size={cfg.train_size}", f"test_size={cfg.test_size}", f"seed={cfg.seed}"]
    if cfg.backbone_steps:
        sets.append(f"steps={cfg.backbone_steps}")
    bcfg = apply_overrides(bcfg, sets)
    t0 = time.perf_counter()
    variables, meta, path, binfo = backbone_stage(r, arch=cfg.arch, weights=cfg.weights, train_cfg=bcfg,
                                                  progress=progress)
    info: dict[str, Any] = {}
    if "backbone_test_accuracy" in binfo:
        info = {"trained": True, "backbone_test_accuracy": binfo["backbone_test_accuracy"],
                "backbone_time_s": time.perf_counter() - t0}
    variables = {k: v for k, v in variables.items()}
    have = _num_classes(cfg.arch, variables)
    check_weights_fit(path, {**meta, "num_classes": meta.get("num_classes") or have}, num_classes=num_classes,
                      image_shape=image_shape, data_spec=data_spec(cfg))
    performer = backbones.create(cfg.arch, have, **backbones.arch_kwargs_from(cfg.arch, variables))
    info.update({"weights": str(path), "performer_meta_accuracy": meta.get("test_accuracy")})
    return performer, variables, info


def check_layer_order(cfg: ExplainerConfig) -> None:
    """The explainer reconstructs a *higher* layer (``target``) from a lower one (``layer``): a target at or
    below the input layer is an error, before anything is trained."""
    if cfg.model:  # a user model's layer names are known once it is loaded: checked in build()
        if not (cfg.layer and cfg.target):
            raise ConfigError(f"with --model {cfg.model} give --layer and --target, module paths of your model "
                              "(post-ReLU, the target above the layer); an unknown name lists the valid ones")
        return
    layer, target = cfg.layers()
    names = backbones.layer_names(cfg.arch)
    if layer in names and target in names and names.index(target) <= names.index(layer):
        above = names[names.index(layer) + 1:]
        raise ConfigError(f"explainer target {target!r} is {'the same layer as' if target == layer else 'below'} "
                          f"the input layer {layer!r}; the target must be a higher layer, e.g. --target "
                          f"{above[-1] if above else '...'} (layers above {layer}: {', '.join(above[:8])})")


# ------------------------------------------------------------------------------------------------- building
@dataclasses.dataclass
class Setup:
    cfg: ExplainerConfig
    performer: Any
    perf_vars: dict
    layer: str
    target: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    explainer: M.Explainer
    feats: Any
    logits: Any


def build(cfg: ExplainerConfig, performer, perf_vars, images: np.ndarray, model_info: Any = None) -> Setup:
    """Checks the layers, measures the feature shapes on ``images`` and builds the explainer module.

    ``model_info``: the ``jinterp.models.ModelInfo`` of a user's model (``cfg.model``); its layer names are then
    the valid ones and its input scaling ``normalization or "unit"``."""
    layer, target = cfg.layers()
    if model_info is not None:
        from jinterp.models import check_layers

        names = model_info.layer_names
        check_layers(model_info, [layer, target])
        if names.index(target) <= names.index(layer):
            above = names[names.index(layer) + 1:]
            raise LayerError(f"explainer target {target!r} is not above the input layer {layer!r} in {cfg.model}; "
                             f"give a higher layer (layers above {layer}: {', '.join(above[:8])})")
        scheme = model_info.normalization or "unit"
    else:
        names = backbones.layer_names(cfg.arch, **backbones.arch_kwargs_from(cfg.arch, perf_vars))
        backbones.check_layers(names, [layer, target])
        scheme = cfg.arch
    feats = M.performer_features(performer, scheme, (layer, target))
    f, fp = jax.jit(feats)(perf_vars, jnp.asarray(images[:8]))
    out_relu = bool(jnp.min(fp) >= 0)
    explainer = M.Explainer(
        out_shape=tuple(int(d) for d in fp.shape[1:]), filters=cfg.filters or int(fp.shape[-1]),
        decoder_width=cfg.decoder_width, location=cfg.location, beta_init=cfg.beta_init,
        norm_momentum=cfg.norm_momentum, norm_eps=cfg.norm_eps, p_bias_init=cfg.p_bias_init, out_relu=out_relu)
    if model_info is None:
        logits = M.replaced_logits(performer, cfg.arch, target) if out_relu else None
    else:
        logits = _user_replaced_logits(performer, scheme, target) if out_relu else None
    return Setup(cfg, performer, perf_vars, layer, target, tuple(int(d) for d in f.shape[1:]),
                 explainer.out_shape, explainer, feats, logits)


def _user_replaced_logits(performer, scheme: str, target: str):
    """``logits(perf_vars, images_uint8, recon)`` of a user's model (converted PyTorch, Linen or NNX) with layer
    ``target``'s output replaced by ``recon`` (the model's ``edits``)."""
    from jinterp.models import takes_edits

    if not takes_edits(performer):
        raise ConfigError(f"the explainer feeds its reconstruction back into the model through edits=, which a "
                          f"{type(performer).__name__} does not take; pass the model as a PyTorch, Linen or NNX "
                          "module (or from_torch/from_linen/from_nnx), or use a built-in arch (cfg.arch)")

    def logits(perf_vars, images, recon):
        x = backbones.normalize(images, scheme)
        out, _ = performer.apply(perf_vars, x, train=False, edits={target: lambda _: recon})
        return out

    return logits


def make_step(s: Setup, tx, steps_per_epoch: int, *, num_models: int = 0):
    """Jitted ``step(state, perf_vars, images, lam, eta) -> (state, metrics)``; with ``num_models`` > 0 the
    state, lam and eta carry a leading model axis and the update is vmapped (features computed once)."""
    cfg = s.cfg
    # The config decides every loss/update option (faithful mode: raw maps, 1/B surrogate, the released β rule).
    loss_fn = M.make_loss(s.explainer, **cfg.loss_kwargs())
    update = M.make_update(loss_fn, tx, steps_per_epoch=steps_per_epoch, **cfg.update_kwargs())
    if num_models:
        update = jax.vmap(update, in_axes=(0, None, None, 0, 0))

    def step(state, perf_vars, images, lam, eta):
        f, fp = s.feats(perf_vars, images)
        return update(state, f, fp, lam, eta)

    # Reductions outside YNNPACK: the ICNN loss's leading-axis reductions (jinterp.core.xla_options).
    return xla_options.jit_reductions_outside_ynn(step, donate_argnums=(0,))


def init_state(s: Setup, tx, key: jax.Array) -> train.TrainState:
    k_init, k_loop = jax.random.split(key)
    variables = M.init_explainer(s.explainer, k_init, s.in_shape)
    return train.create_train_state(variables, tx, k_loop)


# -------------------------------------------------------------------------------------------------- evaluation
def _pad(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)], axis=0)


def collect(s: Setup, variables: dict, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Per test image: relative error, p, correct (original / replaced), and the maps' argmax cells/scores."""
    from jinterp.metrics.localization import argmax_positions

    def fn(variables, perf_vars, imgs):
        f, fp = s.feats(perf_vars, imgs)
        recon, aux = s.explainer.apply(variables, f, train=False)
        out = {"rel": M.relative_error(fp, recon), "p": aux["p"], "f": f, "fp": fp, "a2": aux["a2"],
               "y2": aux["y2"], "sq_err": jnp.sum(jnp.square(fp - recon), axis=(1, 2, 3)),
               "sq_norm": jnp.sum(jnp.square(fp), axis=(1, 2, 3))}
        if s.logits is not None:
            out["logits"] = s.logits(perf_vars, imgs, fp)
            out["logits_rec"] = s.logits(perf_vars, imgs, recon)
        return out

    jfn = jax.jit(fn)
    n = len(images)
    acc: dict[str, list] = {}
    for start in range(0, n, batch_size):
        imgs = _pad(images[start:start + batch_size], batch_size)
        out = jax.device_get(jfn(variables, s.perf_vars, jnp.asarray(imgs)))
        m = min(batch_size, n - start)
        for k, v in out.items():
            v = np.asarray(v)[:m]
            if k in ("f", "fp", "a2", "y2"):
                cells, scores = argmax_positions(v)
                acc.setdefault(k + "_cells", []).append(cells)
                acc.setdefault(k + "_scores", []).append(scores)
                if k in ("y2", "a2") and start == 0:
                    acc.setdefault(k + "_maps", []).append(v)
            else:
                acc.setdefault(k, []).append(v)
    res = {k: np.concatenate(v, axis=0) for k, v in acc.items()}
    res["labels"] = labels
    return res


def randomized_performer(performer, cfg: ExplainerConfig, image_shape: tuple[int, ...]) -> dict:
    """The performer's architecture with freshly initialized weights (PyTorch default init, BatchNorm statistics
    at their initial values): the model-randomization check of Adebayo et al. (NeurIPS 2018, "Sanity checks for
    saliency maps"), full re-initialization rather than their layer-by-layer cascade [I]. A method whose numbers
    survive this does not depend on what the network learned."""
    from jinterp.metrics.baselines import randomized_weights

    return randomized_weights(performer, cfg.seed, image_shape)


def _to_pixels(cells: np.ndarray, map_hw: tuple[int, int], ds: data.Dataset) -> np.ndarray:
    from jinterp.metrics.localization import cells_to_pixels

    h_img, w_img = ds.images.shape[1:3]
    return cells_to_pixels(cells, (w_img / map_hw[1], h_img / map_hw[0]))  # cells are (x, y)


def instability_baselines(cells: np.ndarray, scores: np.ndarray, map_hw: tuple[int, int], ds: data.Dataset,
                          top_n: int, key: jax.Array, label: str = "location instability") -> dict[str, Any]:
    """:func:`instability` of the units and of units that know nothing (:mod:`jinterp.metrics.baselines`: fixed at
    the image centre, fixed at their own mean position, random positions) with the same scores, per category then
    averaged the same way; ``verdict`` says in words whether the units beat all three."""
    from jinterp.metrics import baselines as B

    h_img, w_img = ds.images.shape[1:3]
    xy = _to_pixels(cells, map_hw, ds)
    per_cat: dict[str, list[float]] = {}
    for k in range(ds.num_classes):
        idx = np.nonzero(ds.labels == k)[0]
        vis = ds.landmark_visible[idx]
        keep = vis.any(axis=0)
        if len(idx) < 2 or not keep.any():
            continue
        vals = B.instability_baselines(xy[idx], scores[idx], ds.landmarks[idx][:, keep], vis[:, keep],
                                       (h_img, w_img), jax.random.fold_in(key, k), variant="icnn", top_n=top_n)
        for name, v in vals.items():
            per_cat.setdefault(name, []).append(float(v))
    out = {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for name, v in per_cat.items()}
    if not out:
        return {"note": "data set has no landmarks"}
    summary = B.instability_summary(out, label=label)
    return {**out, "beats_baselines": summary["beats_baselines"], "verdict": summary["text"]}


# Share of filters on the most common cell above which the filters count as one detector copied (issue #20).
COLLAPSE_SHARE = 0.20


def filter_diversity(cells: np.ndarray, map_hw: tuple[int, int], ds: data.Dataset) -> dict[str, Any]:
    """:mod:`jinterp.metrics.diversity` of one unit set: the share of filters peaking on the most common cell
    (``1/K`` at best, 1 when collapsed) and how many synthparts parts the filters cover (radius: half the typical
    distance between neighbouring parts, :func:`jinterp.metrics.diversity.part_radius`; reported in pixels and in
    cells of this map)."""
    from jinterp.metrics import diversity as D

    share = D.share_on_most_common_cell(cells.astype(np.int32), map_hw)
    out: dict[str, Any] = {"share_on_most_common_cell": share, "filters": int(cells.shape[1])}
    cov = None
    if ds.landmarks is not None:
        try:
            cov = D.parts_covered(_to_pixels(cells, map_hw, ds), ds.landmarks, ds.landmark_visible)
        except DataError as e:  # no image shows two parts: no radius to derive; the share above still stands
            out["parts_covered_note"] = str(e)
    if cov is not None:
        out.update(parts_covered=cov["parts_covered"], parts=int(ds.landmarks.shape[1]),
                   filters_per_part=cov["filters_per_part"], part_radius_px=cov["radius"],
                   part_radius_cells=cov["radius"] * map_hw[0] / float(ds.images.shape[1]))
    collapsed = share > COLLAPSE_SHARE
    out["collapsed"] = bool(collapsed)
    if share > 0.5:
        what = "most filters are one detector copied, so their instability measures one part, not many."
    elif collapsed:
        what = "several filters share one peak, so they cover fewer places than their number suggests."
    else:
        what = "the filters peak in different places."
    if collapsed:  # why (measured in experiments/README.md, "Why the filters collapse")
        what += (" The paper's filter loss scores each filter alone, so copies of the best detector score as well as "
                 "different detectors; filter_diversity > 0 spreads them at a cost in instability.")
        if cov is not None and ds.landmarks.shape[1] > 1:
            what += (f" With {ds.landmarks.shape[1]} parts, part detectors spread evenly over them would still put "
                     f"{1 / ds.landmarks.shape[1]:.0%} on one cell.")
    least = 1 / cells.shape[1]  # every filter on its own cell
    floor = f" (1/K, the least possible, is {least:.0%})" if least > COLLAPSE_SHARE else ""
    out["verdict"] = (f"{share:.0%} of the filters peak on the same cell per image (at most {COLLAPSE_SHARE:.0%} "
                      f"wanted{floor}): " + what)
    return out


def instability(cells: np.ndarray, scores: np.ndarray, map_hw: tuple[int, int], ds: data.Dataset,
                top_n: int) -> dict[str, Any]:
    """ICNN-variant location instability per synthparts category (landmarks = that category's part centers),
    averaged over categories (the ICNN protocol evaluates single-category performers)."""
    from jinterp.metrics.localization import cells_to_pixels, location_instability

    if ds.landmarks is None:
        return {"value": float("nan"), "note": "data set has no landmarks"}
    h_img, w_img = ds.images.shape[1:3]
    stride = (w_img / map_hw[1], h_img / map_hw[0])          # cells are (x, y)
    xy = cells_to_pixels(cells, stride)
    per_cat = {}
    for k in range(ds.num_classes):
        idx = np.nonzero(ds.labels == k)[0]
        vis = ds.landmark_visible[idx]
        keep = vis.any(axis=0)
        if len(idx) < 2 or not keep.any():
            continue
        r = location_instability(xy[idx], scores[idx], ds.landmarks[idx][:, keep], vis[:, keep], (h_img, w_img),
                                 variant="icnn", top_n=top_n)
        per_cat[ds.class_names[k]] = float(r.value)
    vals = [v for v in per_cat.values() if np.isfinite(v)]
    return {"value": float(np.mean(vals)) if vals else float("nan"), "per_category": per_cat}


def evaluate(s: Setup, variables: dict, test: data.Dataset, *, with_instability: bool = True,
             with_baselines: bool = False, key: jax.Array | None = None) -> dict[str, Any]:
    """Reconstruction, accuracy and p; instability of every unit set; with ``with_baselines`` also each unit
    set's instability baselines and filter diversity (random positions drawn from ``key``)."""
    cfg = s.cfg
    c = collect(s, variables, test.images, test.labels, min(cfg.eval_batch_size, len(test)))
    out: dict[str, Any] = {
        "relative_error": float(np.mean(c["rel"])),
        "relative_error_pooled": float(np.sum(c["sq_err"]) / max(np.sum(c["sq_norm"]), 1e-12)),
        "p_mean": float(np.mean(c["p"])), "p_std": float(np.std(c["p"])),
        "p_quantiles": {str(q): float(np.quantile(c["p"], q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
    }
    if "logits" in c:
        a0 = float(np.mean(np.argmax(c["logits"], -1) == c["labels"]))
        a1 = float(np.mean(np.argmax(c["logits_rec"], -1) == c["labels"]))
        out.update({"accuracy": a0, "accuracy_replaced": a1, "accuracy_drop": a0 - a1,
                    "prediction_agreement": float(np.mean(np.argmax(c["logits"], -1)
                                                          == np.argmax(c["logits_rec"], -1)))})
    if with_instability:
        hw_in, hw_out = s.in_shape[:2], s.out_shape[:2]
        top = cfg.instability_top_n
        out["instability"] = {
            "explainer_interp2_masked": instability(c["y2_cells"], c["y2_scores"], hw_in, test, top),
            "explainer_interp2": instability(c["a2_cells"], c["a2_scores"], hw_in, test, top),
            f"performer_{s.layer}": instability(c["f_cells"], c["f_scores"], hw_in, test, top),
            f"performer_{s.target}": instability(c["fp_cells"], c["fp_scores"], hw_out, test, top),
        }
        if with_baselines:
            unit_sets = {"explainer_interp2_masked": ("y2", hw_in), "explainer_interp2": ("a2", hw_in),
                         f"performer_{s.layer}": ("f", hw_in), f"performer_{s.target}": ("fp", hw_out)}
            key = jax.random.PRNGKey(cfg.seed) if key is None else key
            out["instability_baselines"] = {
                name: instability_baselines(c[k + "_cells"], c[k + "_scores"], hw, test, top,
                                            jax.random.fold_in(key, i),
                                            label=f"{name.replace('_', ' ')}: location instability")
                for i, (name, (k, hw)) in enumerate(unit_sets.items())}
            out["filter_diversity"] = {name: filter_diversity(c[k + "_cells"], hw, test)
                                       for name, (k, hw) in unit_sets.items()}
    out["_collected"] = c
    return out


# ------------------------------------------------------------------------------------------------------- sweep
def run_sweep(s: Setup, train_ds: data.Dataset, test: data.Dataset, key: jax.Array) -> list[dict[str, Any]]:
    """Trains the λ × η grid as one vmapped stack of explainers (same init, same batches) and evaluates each."""
    cfg = s.cfg
    grid = [(lam, eta) for lam in cfg.sweep_lams for eta in cfg.sweep_etas]
    steps = cfg.sweep_steps
    tx, _ = train.make_optimizer(cfg.optim, steps)
    one = init_state(s, tx, key)
    states = jax.tree.map(lambda x: jnp.stack([x] * len(grid)), one)
    lams = jnp.asarray([g[0] for g in grid], jnp.float32)
    etas = jnp.asarray([g[1] for g in grid], jnp.float32)
    step = make_step(s, tx, max(len(train_ds) // cfg.batch_size, 1), num_models=len(grid))
    it = data.BatchIterator(train_ds, cfg.batch_size, seed=cfg.seed + 1, drop_remainder=True)
    t0 = time.perf_counter()
    try:
        for _ in range(steps):
            states, metrics = step(states, s.perf_vars, jnp.asarray(next(it)["image"]), lams, etas)
        jax.block_until_ready(states)
    finally:
        it.close()
    train_time = time.perf_counter() - t0
    rows = []
    for i, (lam, eta) in enumerate(grid):
        st = jax.tree.map(lambda x, i=i: x[i], states)
        ev = evaluate(s, st.variables, test)
        rows.append({"lam": lam, "eta": eta, "relative_error": ev["relative_error"], "p_mean": ev["p_mean"],
                     "accuracy_replaced": ev.get("accuracy_replaced"),
                     "instability_interp2": ev["instability"]["explainer_interp2"]["value"],
                     "instability_interp2_masked": ev["instability"]["explainer_interp2_masked"]["value"],
                     "filter_loss": float(metrics["filter"][i])})
    for r in rows:
        r["sweep_train_time_s"] = train_time
    return rows


# --------------------------------------------------------------------------------------------------------- run
def _json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, list | tuple):
        return [_json_ready(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run(cfg: ExplainerConfig, workdir: str | Path, *, progress: bool = True, restart: bool = False,
        model: Any = None, variables: Any = None) -> dict[str, Any]:
    """Runs the whole method (see the module docstring); returns and writes ``<workdir>/results.json``.

    Stages of the :class:`~jinterp.core.run.Run`: ``backbone`` (the performer; resumable when trained here),
    ``explainer`` (resumable: checkpoints), then ``results`` (evaluation, sweep, figures).

    ``model``, ``variables``: a model passed in Python instead of ``cfg.model``/``cfg.arch`` (a converted
    ``(model, variables)`` pair, a Linen module and its variables, an NNX or PyTorch module); it runs through the
    same stage as ``--model`` and its digest is in every stage's fingerprint (:mod:`jinterp.models.given`).
    """
    cfg = with_model(cfg, model, variables)
    cfg.validate()
    check_layer_order(cfg)
    with Run(workdir, cfg, method="explainer", restart=restart) as r:
        return _run(cfg, r, progress)


# Fields that change no trained parameter.
_COSMETIC = ("log_every", "ckpt_every", "keep", "num_figure_filters")


def _run(cfg: ExplainerConfig, r: Run, progress: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    workdir = r.workdir
    times: dict[str, float] = {}

    spec = data_spec(cfg)
    train_ds, test_ds = data.load(spec, "train"), data.load(spec, "test")
    if len(train_ds) < cfg.batch_size:
        raise DataError(f"{spec}: {len(train_ds)} training images < batch_size {cfg.batch_size}")
    t0 = time.perf_counter()
    performer, perf_vars, perf_info = load_performer(cfg, r, train_ds.num_classes,
                                                     tuple(int(d) for d in train_ds.images.shape[1:]), progress)
    times["performer_s"] = time.perf_counter() - t0
    model_info = perf_info.pop("model_info", None)
    if cfg.randomize_backbone:  # Adebayo et al.'s model-randomization check: same method, untrained weights
        perf_vars = randomized_performer(performer, cfg, tuple(int(d) for d in train_ds.images.shape[1:]))
        perf_info["randomized"] = True
    s = build(cfg, performer, perf_vars, train_ds.images, model_info)
    if s.logits is None:
        raise ConfigError(f"target layer {s.target!r} has negative values; the explainer reconstructs post-ReLU "
                          "layers (relu*/pool*/layer*), pick one with --target")

    # ---- train the explainer (checkpointed, resumable)
    steps_per_epoch = max(len(train_ds) // cfg.batch_size, 1)
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    tx, _ = train.make_optimizer(cfg.optim, total)
    root = jax.random.PRNGKey(cfg.seed)
    state = init_state(s, tx, jax.random.fold_in(root, 0))
    fields = {k: v for k, v in to_dict(cfg).items() if k not in _COSMETIC}
    train_fields = {k: v for k, v in fields.items()  # what the trained explainer depends on
                    if not k.startswith("sweep_") and k not in ("eval_batch_size", "instability_top_n")}
    explainer_stage = r.stage("explainer", fields=train_fields, inputs={"backbone": r.upstream("backbone"),
                                                                        "data": data_fingerprint(spec)},
                              paths=["checkpoints", loop.METRICS_FILE], resumable=True,
                              code=("jinterp.methods.explainer.model", "jinterp.methods.explainer.icnn"))
    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.keep, config=to_dict(cfg))
    state, start, pos = loop.restore_or_init(ckpt, state, workdir)
    step = make_step(s, tx, steps_per_epoch)
    lam, eta = jnp.float32(cfg.lam), jnp.float32(cfg.eta)
    train_step = lambda st, batch: step(st, s.perf_vars, batch["image"], lam, eta)
    it = data.BatchIterator(train_ds, cfg.batch_size, seed=cfg.seed, drop_remainder=True, position=pos)
    perf_before = jax.tree.map(np.asarray, jax.device_get(perf_vars))
    t0 = time.perf_counter()
    try:
        with ckpt:  # closed on the way out; a close failing after an error never hides that error
            state = loop.train_loop(state, train_step=train_step, train_iter=it, num_steps=total, workdir=workdir,
                                    checkpointer=ckpt, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                                    progress=progress, desc="train explainer")
    finally:
        it.close()
    times["explainer_train_s"] = time.perf_counter() - t0
    explainer_stage.finish()
    results_stage = r.stage("results", fields=fields, inputs={"explainer": explainer_stage.fingerprint},
                            paths=[RESULTS_FILE, "figures"])
    perf_unchanged = all(np.array_equal(a, np.asarray(b)) for a, b in
                         zip(jax.tree.leaves(perf_before), jax.tree.leaves(jax.device_get(s.perf_vars)), strict=True))

    # ---- evaluate
    t0 = time.perf_counter()
    ev = evaluate(s, state.variables, test_ds, with_baselines=True, key=jax.random.fold_in(root, 2))
    times["evaluate_s"] = time.perf_counter() - t0
    history = loop.MetricsWriter(workdir).read()
    train_curve = [{"step": h["step"], **{k: h["metrics"][k] for k in ("loss", "recon", "filter", "p_mean")
                                          if k in h["metrics"]}} for h in history if h["split"] == "train"]

    sweep: list[dict] = []
    if cfg.sweep_steps and cfg.sweep_lams and cfg.sweep_etas:
        t0 = time.perf_counter()
        sweep = run_sweep(s, train_ds, test_ds, jax.random.fold_in(root, 1))
        times["sweep_s"] = time.perf_counter() - t0

    # ---- figures
    t0 = time.perf_counter()
    figures = {}
    try:
        from jinterp.report.figures import explainer as F

        figdir = workdir / "figures"
        c = ev["_collected"]
        n_fig = len(c["y2_maps"])
        figures["part_maps"] = str(F.part_maps(test_ds.images[:n_fig], c["y2_maps"], c["y2_scores"][:n_fig],
                                               figdir / "part_maps.png", num_filters=cfg.num_figure_filters,
                                               title=f"explainer interp2 part maps ({s.layer} -> {s.target})"))
        figures["p_hist"] = str(F.p_histogram(c["p"], figdir / "p_hist.png"))
        if train_curve:
            figures["training"] = str(F.training_curve(train_curve, figdir / "training.png"))
        if sweep:
            figures["sweep"] = str(F.sweep_tradeoff(sweep, figdir / "sweep.png"))
    except ImportError as e:  # matplotlib missing: results without figures
        figures["error"] = f"figures skipped: {e}"
    times["figures_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - t_start

    results = {
        "method": "explainer", "arch": cfg.model or cfg.arch, "data": spec, "layer": s.layer, "target": s.target,
        "in_shape": list(s.in_shape), "out_shape": list(s.out_shape), "filters": s.explainer.filters,
        "steps": int(jax.device_get(state.step)), "resumed_from": start, "lam": cfg.lam, "eta": cfg.eta,
        "surrogate": cfg.surrogate, "faithful": cfg.faithful, "randomize_backbone": cfg.randomize_backbone,
        "performer": perf_info, "performer_unchanged": perf_unchanged,
        "beta_mean": {k: float(np.mean(v)) for k, v in jax.device_get(state.model_state["icnn"]).items()},
        **{k: v for k, v in ev.items() if not k.startswith("_")},
        "train_curve": train_curve, "sweep": sweep, "figures": figures,
        "times": times, "devices": jax.device_count(), "backend": jax.default_backend(),
    }
    results = _json_ready(results)
    r.write_json(RESULTS_FILE, results)
    results_stage.finish()
    return results
