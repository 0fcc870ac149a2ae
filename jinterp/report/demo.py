"""``jinterp demo``: one small CNN interpreted by all five methods, evaluated against ground truth, in one report.

    jinterp demo                      # synthparts, trains the small ConvNet, every method's tiny preset (~15 min CPU)
    jinterp demo --quick              # reduced sizes: a few minutes on a 2-core CPU (run by the tests)
    jinterp demo --weights ../shared/weights/resnet20-12fca82f.th --arch resnet20 \\
                 --data npz:../shared/data/cifar10_subset.npz

Stages: data → backbone (trained here, or ``--weights``: a jinterp ``.npz`` or a PyTorch checkpoint, converted) →
explainer network → explanatory graph → interpretable bases (natural, random, UIBE, IBD) → ClaDec (+ RefAE) →
class-specific gates. Each method runs its own program (``jinterp.methods.<m>.program.run``) in
``<workdir>/<method>/`` with its ``tiny`` preset (``--config paper``: the published settings; hours), pointed at the
same backbone and data. A method whose evaluation needs annotations the data lacks (part landmarks, concept masks)
is skipped and the report says why; a method that fails is reported with its error and the others still run.

Writes ``<workdir>/report.html`` (self-contained), ``<workdir>/summary.json`` and each method's figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

METHODS = ("explainer", "graph", "basis", "cladec", "csg")
TITLES = {
    "backbone": "Backbone",
    "explainer": "Explainer network (Zhang et al.)",
    "graph": "Explanatory graph (Zhang et al., AAAI 2018)",
    "basis": "Interpretable basis: UIBE vs natural, random and IBD (Doumanoglou et al.)",
    "cladec": "ClaDec vs reference auto-encoder (Schneider & Vlachos)",
    "csg": "Class-specific gates (Liang et al., ECCV 2020)",
}
# What each method's evaluation needs from the data (Dataset attributes); absent -> skipped with the reason.
NEEDS = {"graph": ("landmarks",), "basis": ("masks",)}
NEED_TEXT = {"landmarks": "part landmarks (e.g. synthparts' part centers)",
             "masks": "per-pixel concept masks (e.g. synthparts or Broden-format data)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default=None,
                        help="backbone of --weights (default: from the weights file's meta; convnet when training)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="root seed of every stage (default: %(default)s)")
    parser.add_argument("--layers", default=None, metavar="LOW,HIGH",
                        help="with --model: two module paths of your model, a lower and a higher post-ReLU conv "
                             "layer (explainer LOW->HIGH, graph LOW,HIGH, ClaDec LOW, basis and CSG's gate HIGH)")
    parser.add_argument("--head", default=None, metavar="MODULE",
                        help="with --model: the classifier module CSG gates before (default: the last module "
                             "with a 2-D kernel)")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo shares across methods. ``quick`` shrinks every stage (tests, first look)."""

    data: str = "synthparts"
    arch: str = "convnet"
    weights: str = ""
    seed: int = 0
    quick: bool = False
    preset: str = "tiny"
    image_size: int = 64
    methods: tuple[str, ...] = METHODS
    model: str = ""  # a user model (FILE.py:FACTORY or a converted .npz) instead of arch; then layers and head
    layers: tuple[str, ...] = ()
    head: str = ""

    def data_spec(self) -> str:
        from jinterp import data

        return data.with_synthparts_defaults(self.data, size=self.image_size, n_train=800 if self.quick else 3000,
                                             n_test=200 if self.quick else 600, seed=self.seed)


# ----------------------------------------------------------------------------------------------------- backbone
def prepare_backbone(s: DemoSettings, workdir: Path, progress: bool, restart: bool = False) -> dict[str, Any]:
    """Trains the ConvNet on the demo data, or converts/loads ``--weights``; returns {arch, weights, accuracy...}.

    Weights for other images (channels) or another number of classes than the data's are a WeightsError naming
    both, before any method runs."""
    from jinterp.backbones import torch_import
    from jinterp.core.run import load_backbone_weights, write_file

    out = workdir / "backbone"
    if s.model:
        return _user_backbone(s)
    if s.weights:
        src = Path(s.weights)
        if src.suffix == ".npz":
            variables, meta = load_backbone_weights(src, s.arch if s.arch else None)
            info = {"arch": meta["arch"], "weights": str(src), "source": src.name, "trained_here": False}
        else:
            variables = torch_import.from_torch(s.arch, src)
            path = write_file(out / "params.npz",  # process 0 writes (jinterp.core.run.write_file)
                              lambda tmp: torch_import.save_variables(tmp, variables, {"arch": s.arch,
                                                                                       "source": src.name}))
            info = {"arch": s.arch, "weights": str(path), "source": src.name, "trained_here": False,
                    "converted_from": "pytorch"}
        _check_fit(src, variables, s.data_spec())
        info["test_accuracy"] = _accuracy(info["arch"], variables, s.data_spec())
        return info
    from jinterp.core import config as cfglib
    from jinterp.core.train_backbone import train_backbone

    cfg = cfglib.TrainBackboneConfig.tiny() if s.preset == "tiny" else cfglib.TrainBackboneConfig.paper()
    cfg = dataclasses.replace(cfg, arch=s.arch, data=s.data_spec(), image_size=s.image_size, seed=s.seed,
                              train_size=0, test_size=0)
    if s.quick:
        cfg = dataclasses.replace(cfg, steps=150, eval_every=0, ckpt_every=0, log_every=25)
    final = train_backbone(cfg, out, progress=progress, restart=restart)
    return {"arch": s.arch, "weights": str(out / "params.npz"), "trained_here": True,
            "test_accuracy": final["test_accuracy"], "steps": final["step"], "seconds": final["wall_time_s"]}


def _user_backbone(s: DemoSettings) -> dict[str, Any]:
    """The user's ``--model``: loaded (and so converted, checked) once here, its layers and head validated and its
    test accuracy measured before any method runs; each method loads it again in its own run."""
    import jax
    import numpy as np

    from jinterp import backbones, data
    from jinterp.errors import WeightsError
    from jinterp.models import check_layers, load_model

    ds = data.load(s.data_spec(), "test")
    model, variables, info = load_model(s.model, s.weights or None, image_shape=tuple(ds.images.shape[1:]))
    if info.num_classes != ds.num_classes:
        raise WeightsError(f"model {s.model} outputs {info.num_classes} logits but the data {s.data_spec()} has "
                           f"{ds.num_classes} classes; give a model whose head has {ds.num_classes} outputs")
    head = s.head or _head(variables)
    check_layers(info, (*s.layers, head))
    scheme = info.normalization or "unit"
    predict = jax.jit(lambda v, x: model.apply(v, backbones.normalize(x, scheme), train=False)[0].argmax(-1))
    correct = sum(int((np.asarray(predict(variables, ds.images[i:i + 256])) == ds.labels[i:i + 256]).sum())
                  for i in range(0, len(ds), 256))
    return {"arch": s.model, "model": s.model, "weights": s.weights or "factory", "head": head,
            "trained_here": False, "test_accuracy": correct / max(len(ds), 1)}


def _user_model_config(name: str, cfg, s: DemoSettings, backbone: dict):
    """A method's config on the user's model: its layers (``s.layers``: low, high) and CSG's head."""
    low, high = s.layers
    values = {"model": s.model, "weights": s.weights, "data": s.data_spec(), "seed": s.seed,
              "image_size": s.image_size}
    values.update({"explainer": {"layer": low, "target": high},
                   "graph": {"layers": (low, high), "strides": (), "centers": ()},
                   "basis": {"layer": high}, "cladec": {"layers": (low,)},
                   "csg": {"gate_layer": high, "head": backbone["head"]}}[name])
    fields = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in values.items() if k in fields})
    if s.quick:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in QUICK.get(name, {}).items() if k != "layers"})
    return cfg


def _check_fit(path: Path, variables: dict, spec: str) -> None:
    """The weights' input channels (first conv kernel) and classes (classifier bias) against the data's."""
    from jinterp import data
    from jinterp.core.run import check_weights_fit

    ds = data.load(spec, "test")
    kernels = [v for v in _leaves(variables["params"]) if getattr(v, "ndim", 0) == 4]
    meta: dict[str, Any] = {"num_classes": int(variables["params"][_head(variables)]["bias"].shape[0])}
    if kernels:
        meta["image_shape"] = [0, 0, int(kernels[0].shape[2])]  # HWIO: the first conv's input channels
    check_weights_fit(path, meta, num_classes=ds.num_classes, image_shape=tuple(ds.images.shape[1:]),
                      data_spec=spec)


def _leaves(tree: Any) -> list:
    """Leaves in module order (Flax keeps the order layers were defined in)."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    return [tree]


def _accuracy(arch: str, variables: dict, spec: str) -> float:
    """Test accuracy of given weights on the demo data (the backbone's own input normalization)."""
    import jax
    import numpy as np

    from jinterp import backbones, data

    ds = data.load(spec, "test")
    model = backbones.create(arch, num_classes=int(variables["params"][_head(variables)]["bias"].shape[0]),
                             **backbones.arch_kwargs_from(arch, variables))
    predict = jax.jit(lambda v, x: model.apply(v, backbones.normalize(x, arch), train=False)[0].argmax(-1))
    correct = 0
    for i in range(0, len(ds), 256):
        x = np.asarray(ds.images[i:i + 256], np.float32) / 255.0
        correct += int((np.asarray(predict(variables, x)) == ds.labels[i:i + 256]).sum())
    return correct / max(len(ds), 1)


def _head(variables: dict) -> str:
    """The classifier layer: the last params entry with a 2-D kernel."""
    return [k for k, v in variables["params"].items() if "kernel" in v and v["kernel"].ndim == 2][-1]


# ------------------------------------------------------------------------------------------- method configs
def _common(cfg, s: DemoSettings, backbone: dict, **extra):
    fields = {f.name for f in dataclasses.fields(cfg)}
    values = {"arch": backbone["arch"], "weights": backbone["weights"], "data": s.data_spec(), "seed": s.seed,
              "image_size": s.image_size, **extra}
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k in fields})


def method_config(name: str, s: DemoSettings, backbone: dict):
    """The method's preset (tiny or paper) pointed at the demo's backbone and data, shrunk further with --quick."""
    import importlib

    mod = importlib.import_module(f"jinterp.methods.{name}.config")
    cls = {"explainer": "ExplainerConfig", "graph": "GraphConfig", "basis": "BasisConfig",
           "cladec": "ClaDecConfig", "csg": "CSGConfig"}[name]
    cfg = getattr(getattr(mod, cls), s.preset)()
    if s.model:
        return _user_model_config(name, cfg, s, backbone)
    cfg = _common(cfg, s, backbone)
    arch = backbone["arch"]
    if arch != "convnet":  # the tiny presets name ConvNet layers; pick the same depth in other families
        if name == "graph" and arch.startswith("resnet"):
            r20 = mod.GraphConfig.resnet20()
            cfg = dataclasses.replace(cfg, layers=r20.layers, density=r20.density, top_n=r20.top_n, top_m=r20.top_m)
        cfg = dataclasses.replace(cfg, **ARCH_LAYERS.get(arch, {}).get(name, {}))
    if name == "csg":  # CSG trains its own gated CNN (from the backbone's weights as initialization)
        cfg = dataclasses.replace(cfg, widths=_backbone_widths(backbone))
    if s.quick:
        quick = dict(QUICK.get(name, {}))
        if arch != "convnet":
            quick.pop("layers", None)
        cfg = dataclasses.replace(cfg, **quick)
    return cfg


def _backbone_widths(backbone: dict) -> tuple[int, ...]:
    from jinterp import backbones
    from jinterp.backbones import torch_import

    variables, _ = torch_import.load_variables(backbone["weights"], backbone["arch"])
    return backbones.arch_kwargs_from(backbone["arch"], variables).get("widths", ())


# Layers for backbones other than the ConvNet the tiny presets assume (explainer and CSG pick their own per arch).
ARCH_LAYERS: dict[str, dict[str, dict[str, Any]]] = {
    **{a: {"cladec": {"layers": ("layer3",)}, "basis": {"layer": "layer3"}}
       for a in ("resnet20", "resnet32", "resnet44", "resnet56")},
    **{a: {"cladec": {"layers": ("layer4",)}, "basis": {"layer": "layer4"}} for a in ("resnet18", "resnet50")},
    "vgg11_bn_cladec": {"cladec": {"layers": ("conv4a",)}, "basis": {"layer": "conv4"}},
    "vgg16": {"cladec": {"layers": ("features.29",)}, "basis": {"layer": "features.29"}},
}

# Reductions for --quick on top of the tiny presets (fields of each method's config).
QUICK: dict[str, dict[str, Any]] = {
    "explainer": {"train_size": 600, "test_size": 200, "filters": 16, "steps": 60, "sweep_steps": 30,
                  "sweep_lams": (1e-3,), "sweep_etas": (0.1, 1.0), "log_every": 20, "ckpt_every": 0,
                  "eval_batch_size": 100, "num_figure_filters": 4},
    "graph": {"num_images": 60, "num_negatives": 60, "iterations": 4, "stability_units": 40},
    "basis": {"n_train": 200, "n_test": 100, "fit_pixels": 5000, "batch_size": 50},
    "cladec": {"train_size": 512, "test_size": 128, "layers": ("relu3",), "epochs": 2, "retrain_epochs": 0,
               "grid_rows": 4},
    "csg": {"train_size": 400, "test_size": 200, "eval_size": 200, "epochs": 4, "warmup_epochs": 1,
            "mask_period": 2, "mask_epoch_min": 1, "adv_size": 64, "pgd_steps": 3, "seeds": 1},
}


# The randomization re-runs skip what the report does not show of them (keeps the demo's added time small).
RANDOMIZED_LIGHTER: dict[str, dict[str, Any]] = {"explainer": {"sweep_steps": 0},
                                                 "cladec": {"refae": False, "retrain_epochs": 0},
                                                 "csg": {"seeds": 1, "baseline": False}}


# ------------------------------------------------------------------------------------------------ sections
def _get(d: dict, *path, default=float("nan")):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _figures(results: dict, workdir: Path):
    from jinterp.report.html import Figure

    figs = results.get("figures") or {}
    items = figs.items() if isinstance(figs, dict) else enumerate(figs)
    out = []
    for key, val in items:
        paths = val if isinstance(val, (list, tuple)) else [val]
        for p in paths:
            if isinstance(p, dict):
                p = p.get("path")
            if isinstance(p, str) and p.endswith(".png"):
                path = Path(p) if Path(p).is_absolute() or Path(p).exists() else workdir / p
                out.append(Figure(path, str(key).replace("_", " ")))
    if not out:  # a program that lists no figures: show what it wrote
        out = [Figure(p, p.stem.replace("_", " ")) for p in sorted((workdir / "figures").glob("*.png"))]
    return out


def _scalars(d: dict, prefix: str = "", depth: int = 2) -> list[tuple[str, Any]]:
    """Numeric leaves of a results dict (for the fallback table)."""
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if k in ("config", "figures", "times", "wall_times_s", "train_curve"):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            rows.append((name, v))
        elif isinstance(v, dict) and depth > 0:
            rows += _scalars(v, name + ".", depth - 1)
    return rows


def section_for(name: str, results: dict, workdir: Path, seconds: float):
    """The report section of a method: its headline table (with baselines) from ``results``, and its figures."""
    from jinterp.report.html import Section, Table

    builder = SECTION_BUILDERS.get(name)
    tables, notes, intro = [], [], ""
    if builder is not None:
        try:
            intro, tables, notes = builder(results)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            notes.append(f"(headline table unavailable: {type(e).__name__}: {e})")
    if not tables:
        tables = [Table("metrics", ["metric", "value"], _scalars(results)[:40])]
    if isinstance(results.get("randomization_check"), dict):  # Adebayo et al.'s check, in words
        from jinterp.report import randomization

        try:
            notes = list(notes) + randomization.notes(name, results, results["randomization_check"])
        except (KeyError, TypeError, ValueError) as e:
            notes = list(notes) + [f"(model-randomization verdict unavailable: {type(e).__name__}: {e})"]
    return Section(TITLES.get(name, name), intro=intro, tables=tables, figures=_figures(results, workdir),
                   notes=notes, seconds=seconds)


# Methods whose demo section also shows the same method on a randomly initialized network (Adebayo et al. 2018).
RANDOMIZATION_CHECK = ("explainer", "graph", "basis", "cladec", "csg")
RANDOM_ROW = "same method on a randomly initialized network"


def _verdicts(tree: Any) -> list[str]:
    """Every ``verdict`` sentence in a results (sub)tree, in order."""
    if isinstance(tree, dict):
        own = [tree["verdict"]] if isinstance(tree.get("verdict"), str) else []
        return own + [v for k, x in tree.items() if k != "verdict" for v in _verdicts(x)]
    return []


def _explainer_section(r: dict):
    from jinterp.report.html import Table

    inst = r.get("instability", {})
    base, div = r.get("instability_baselines") or {}, r.get("filter_diversity") or {}
    rnd = r.get("randomization_check") or {}
    perf = [k for k in inst if k.startswith("performer_")]

    def row(k, role, res):
        b, d = _get(res, "instability_baselines", k, default={}), _get(res, "filter_diversity", k, default={})
        beats = b.get("beats_baselines")
        return (f"{k.replace('_', ' ')}", role, _get(res, "instability", k, "value"), b.get("centre"),
                b.get("mean_position"), b.get("random"), d.get("share_on_most_common_cell"),
                d.get("parts_covered"), "—" if beats is None else ("yes" if beats else "NO"))

    rows = [row(k, "explainer" if k.startswith("explainer") else "performer", r)
            for k in sorted(inst, key=lambda k: k in perf)]
    rows += [row(k, RANDOM_ROW, rnd) for k in sorted(rnd.get("instability") or {}) if k.startswith("explainer")]
    quality = [("relative reconstruction error of the target layer", _get(r, "relative_error")),
               ("performer accuracy on real features", _get(r, "accuracy")),
               ("performer accuracy with the explainer's reconstruction", _get(r, "accuracy_replaced")),
               ("mean mixing weight p (share of the interpretable track)", _get(r, "p_mean"))]
    sweep = [(w.get("lam"), w.get("eta"), w.get("relative_error"), w.get("p_mean"), w.get("accuracy_replaced"),
              w.get("instability_interp2")) for w in r.get("sweep") or []]
    tables = [Table("part localization: lower instability = filters that fire on the same object part; beside it "
                    "units that know nothing (same scores, fixed or random positions) and filter diversity",
                    ["units", "role", "instability", "fixed at centre", "fixed at own mean", "random positions",
                     "share of filters on the most common cell", "parts covered", "beats all baselines"], rows),
              Table(f"distilling {r.get('layer')} -> {r.get('target')}", ["metric", "value"], quality)]
    if sweep:
        tables.append(Table("λ / η trade-off (one vmapped run)", ["λ", "η", "rel. error", "p", "acc. replaced",
                                                                   "instability"], sweep))
    intro = ("An explainer network distils the performer's features into filters trained with the interpretable-CNN "
             "filter loss; its part maps should be more stable on synthparts' part landmarks than raw filters. A "
             "number counts only where it beats units that know nothing and differs from the same method on a "
             "randomly initialized network.")
    notes = _verdicts(base) + _verdicts(div)
    if rnd:
        notes += [f"{RANDOM_ROW}: " + v for v in _verdicts(rnd.get("instability_baselines") or {})]
    return intro, tables, notes


def _graph_section(r: dict):
    from jinterp.report.html import Table

    m = r["metrics"]
    rm = _get(r, "randomization_check", "metrics", default={})
    rows = [("location instability (graph-code variant)", m["instability_graph_nodes"],
             m["instability_graph_filters"], _get(rm, "instability_graph_nodes")),
            ("location instability (ICNN-code variant)", m["instability_icnn_nodes"], m["instability_icnn_filters"],
             _get(rm, "instability_icnn_nodes")),
            ("few-shot part localization: normalized distance", m["fewshot_normalized_distance_nodes"],
             m["fewshot_normalized_distance_filters"], _get(rm, "fewshot_normalized_distance_nodes"))]
    base = []
    for layer, entry in (m.get("instability_baselines") or {}).items():
        for key, b in entry.items():
            base.append((f"{layer} {key.replace('_', ' ')} code", b["method"], b["centre"], b["mean_position"],
                         b["random"], "yes" if b["beats_baselines"] else "NO"))
    lb = m.get("localization_baselines")
    if lb:
        base.append(("few-shot localization, nodes", lb["method"], lb["centre"], f"image-blind {lb['image_blind']:.3g}",
                     lb["random"], "yes" if lb["beats_baselines"] else "NO"))
    layers = [(x["name"], "x".join(map(str, x["map"])), x["nodes_per_filter"], x["nodes"], x["edges"])
              for x in r.get("layers", [])]
    intro = (f"Part patterns mined from each filter by EM on {r.get('num_images')} images of "
             f"'{r.get('category')}'; graph nodes vs the raw filters they come from (lower is better).")
    notes = [m.get("fewshot_note", "")] + _verdicts(m.get("instability_baselines") or {})
    notes += _verdicts(m.get("localization_baselines") or {})
    if rm:
        notes.append(f"{RANDOM_ROW}: " + "; ".join(_verdicts(rm.get("localization_baselines") or {})))
    return intro, [Table("graph nodes vs raw filters", ["metric", "graph nodes", "raw filters (baseline)",
                                                        f"graph nodes, {RANDOM_ROW}"], rows),
                   Table("graph units against units that know nothing (lower is better; same scores, positions "
                         "fixed or random; localization: the image-blind predictor in the 'fixed at own mean' "
                         "column)", ["units", "method", "fixed at centre", "fixed at own mean / image-blind",
                                     "random positions", "beats all baselines"], base),
                   Table("graph", ["layer", "map", "nodes/filter", "nodes", "edges"], layers)], notes


def _basis_section(r: dict):
    from jinterp.report.html import Table

    rows = [(name, b.get("directions"), b.get("detectors"), b.get("unique_detectors"), b.get("S1"), b.get("S2"))
            for name, b in r["bases"].items()]
    intro = (f"Bases of layer {r.get('layer')} ({r.get('channels')} channels) scored by Network-Dissection metrics "
             f"against synthparts' {r.get('concepts')} concepts: '@q' uses NetDissect's top-quantile thresholds, "
             "'@own' the basis' own learned thresholds. natural = raw filters, random = a random rotation "
             "(baselines).")
    return intro, [Table("dissection (higher is more interpretable)", ["basis", "directions", "detectors",
                                                                      "unique detectors", "S1", "S2"], rows)], []


def _cladec_section(r: dict):
    from jinterp.report.html import Table

    rows = []
    for layer, lr in r["layers"].items():
        for src, v in lr["sources"].items():
            rows.append((layer, src, v.get("mse", float("nan")), v.get("frozen_accuracy", float("nan")),
                         v.get("retrain_acc_original", float("nan"))))
    intro = ("Decoders from a layer back to the image: RefAE (a fresh encoder, MSE only) is the baseline; ClaDec "
             "decodes the classifier's own activations, with α weighting the classifier's loss on the "
             "reconstruction. The classifier's accuracy on reconstructions shows what the layer keeps for the task.")
    notes = [r["retrain_protocol"]] if r.get("retrain_protocol") else []
    return intro, [Table("reconstructions", ["layer", "source", "MSE", "frozen classifier accuracy",
                                             "retrained classifier accuracy (real test images)"], rows)], notes


def _csg_section(r: dict):
    from jinterp.report.html import Table

    models = r["models"]
    names = [n for n in ("csg", "standard") if n in models] + [n for n in models if n not in ("csg", "standard")]
    label = {"csg": "CSG", "standard": "standard CNN (baseline)"}

    def row(what, *path):
        return (what, *[_get(models[n], *path) for n in names])

    rows = [row("test accuracy", "accuracy"),
            row("mutual-information score (higher = more class-specific: each filter informative about one class)",
                "mis")]
    if "csg" in models:
        rows.append(("gate density", *[_get(models[n], "density") for n in names]))
    for group, what in (("localization", "localization vs object masks"), ("adversarial", "adversarial")):
        keys = sorted({k for n in names for k, _ in _scalars(models[n].get(group) or {}, depth=1)
                       if "." in k and not k.endswith(("time_s", "linf"))})
        rows += [row(f"{what}: {k.replace('_', ' ')}", group, *k.split(".")) for k in keys]
    intro = (f"A filter x class gate on {r.get('gate_layer')} ({r.get('num_filters')} filters, "
             f"{r.get('num_classes')} classes) trained into the CNN, against the same CNN trained without it "
             "(same data and seed).")
    notes = [r.get("protocol_note", "")]
    obs = r.get("issue6_observation")
    if obs:
        notes.append(_label_leak_note(obs))
    return intro, [Table("CSG vs standard training", ["metric", *[label.get(n, n) for n in names]], rows)], notes


def _label_leak_note(obs) -> str:
    """The CSG label-leak observation (the gate pattern alone can carry the label) in words, not a raw dict."""
    if isinstance(obs, str):
        return f"Label leak through the gate: {obs}"
    def pct(key):
        v = obs.get(key)
        return "n/a" if v is None else f"{100 * v:.1f} %"
    change = obs.get("mean_test_accuracy_change_over_gated_epoch")
    change = "n/a" if change is None else f"{100 * change:+.1f} points"
    return ("Label leak through the gate: during gated epochs the gate is chosen by the true label, so training "
            f"accuracy there ({pct('mean_train_accuracy_gated_epochs')}) can exceed that of the standard epochs after "
            f"warm-up ({pct('mean_train_accuracy_std_epochs_after_warmup')}) without the filters being better; test "
            f"accuracy changed by {change} over a gated epoch on average.")

SECTION_BUILDERS: dict[str, Callable[[dict], tuple[str, list, list[str]]]] = {
    "explainer": _explainer_section, "graph": _graph_section, "basis": _basis_section, "cladec": _cladec_section,
    "csg": _csg_section,
}


# ------------------------------------------------------------------------------------------------------ run
def _header(s: DemoSettings, timings: dict[str, float]) -> dict[str, Any]:
    import flax
    import jax
    import optax

    return {"command": "jinterp demo" + (" --quick" if s.quick else ""), "data": s.data_spec(),
            "backbone": (s.model or s.arch) + (f" ({Path(s.weights).name})" if s.weights else " (trained here)"),
            "preset": s.preset, "seed": s.seed,
            "device": f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind})",
            "versions": f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
                        f"python {platform.python_version()}",
            "total time": f"{sum(timings.values()):.0f} s"}


def _missing(name: str, ds) -> list[str]:
    miss = []
    for need in NEEDS.get(name, ()):
        value = getattr(ds, need, None)
        if value is None or (hasattr(value, "__len__") and len(value) == 0):
            miss.append(need)
    return miss


def run_demo(s: DemoSettings, workdir: str | Path, *, progress: bool = True, restart: bool = False,
             model: Any = None, variables: Any = None) -> dict[str, Any]:
    """Runs every stage; writes ``report.html`` and ``summary.json``; returns the summary.

    A :class:`~jinterp.core.run.Run` holds ``workdir``; the backbone and each method run in their own
    sub-directories as their own runs (fingerprinted stages, reused only under the same settings).
    ``model``, ``variables``: a model passed in Python instead of ``s.model`` (see
    :func:`jinterp.models.given.with_model`); ``s.layers`` (low, high) then name two of its module paths."""
    from jinterp.core.run import Run
    from jinterp.errors import ConfigError
    from jinterp.models.given import with_model

    s = with_model(s, model, variables)
    if s.model and len(s.layers) != 2:
        raise ConfigError(f"with a model of your own give layers=(LOW, HIGH): two module paths of {s.model}, a "
                          "lower and a higher post-ReLU conv output")

    with Run(workdir, s, method="demo", restart=restart) as r:
        return _run_demo(s, r, progress=progress)


def _run_demo(s: DemoSettings, r, *, progress: bool) -> dict[str, Any]:
    import importlib

    from tqdm.auto import tqdm

    from jinterp import data
    from jinterp.report.html import Section, Table, write_report

    workdir = r.workdir
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"settings": dataclasses.asdict(s), "methods": {}}
    sections = []
    stages = tqdm(("backbone", *s.methods), desc="demo", unit="stage", disable=not progress)

    t = time.perf_counter()
    stages.set_postfix_str("backbone")
    probe = data.load(s.data_spec(), "test")  # what annotations the data has (cheap for synthparts)
    backbone = prepare_backbone(s, workdir, progress, restart=r.restart)
    timings["backbone"] = time.perf_counter() - t
    summary["backbone"] = backbone
    rows = [("architecture", backbone["arch"]), ("weights", Path(backbone["weights"]).name)]
    if "test_accuracy" in backbone:
        rows.append(("test accuracy", backbone["test_accuracy"]))
    sections.append(Section(TITLES["backbone"], tables=[Table("the network being interpreted", ["", ""], rows)],
                            seconds=timings["backbone"]))
    stages.update(1)

    failed = []
    for name in s.methods:
        stages.set_postfix_str(name)
        t = time.perf_counter()
        mdir = workdir / name
        miss = _missing(name, probe)
        if miss:
            reason = "the data has no " + " and no ".join(NEED_TEXT[m] for m in miss)
            sections.append(Section(TITLES[name], status="skipped", reason=reason))
            summary["methods"][name] = {"status": "skipped", "reason": reason}
            stages.update(1)
            continue
        try:
            cfg = method_config(name, s, backbone)
            program = importlib.import_module(f"jinterp.methods.{name}.program")
            results = program.run(cfg, mdir, progress=progress, restart=r.restart)
            if name in RANDOMIZATION_CHECK:  # the same method on the same architecture with untrained weights
                rcfg = dataclasses.replace(cfg, randomize_backbone=True, **RANDOMIZED_LIGHTER.get(name, {}))
                results = {**results, "randomization_check": program.run(rcfg, workdir / f"{name}_randomized",
                                                                          progress=progress, restart=r.restart)}
            timings[name] = time.perf_counter() - t
            sections.append(section_for(name, results, mdir, timings[name]))
            summary["methods"][name] = {"status": "ok", "seconds": timings[name],
                                        "results": str((mdir / "results.json").relative_to(workdir))}
        except Exception as e:  # one method's failure must not lose the others' results
            timings[name] = time.perf_counter() - t
            failed.append(name)
            msg = f"{type(e).__name__}: {e}"
            sections.append(Section(TITLES[name], status="failed", reason=msg, seconds=timings[name],
                                    notes=[traceback.format_exc(limit=6)]))
            summary["methods"][name] = {"status": "failed", "error": msg}
        stages.update(1)
    stages.close()

    summary["timings_s"] = timings
    summary["total_s"] = sum(timings.values())
    summary["failed"] = failed
    report = write_report(workdir / "report.html", "jinterp demo: five ways to interpret one CNN",
                          _header(s, timings), sections, config=dataclasses.asdict(s))
    summary["report"] = report.name
    r.write_json("summary.json", summary, default=str)
    return summary


def run(args: argparse.Namespace) -> int:
    """The ``jinterp demo`` command."""
    from jinterp.errors import ConfigError

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods: unknown {bad or '(none)'}; choose from {','.join(METHODS)}")
    model = getattr(args, "model", None) or ""
    layers = tuple(x.strip() for x in (args.layers or "").split(",") if x.strip())
    if model and len(layers) != 2:
        raise ConfigError(f"with --model, give --layers LOW,HIGH: two module paths of {model}, a lower and a higher "
                          "post-ReLU conv layer (an unknown name lists the valid ones)")
    if (layers or args.head) and not model:
        raise ConfigError("--layers and --head name layers of your own model: give it with --model FILE.py:FACTORY")
    if args.weights and not args.arch and not model and not str(args.weights).endswith(".npz"):
        raise ConfigError(f"--weights {args.weights} is a PyTorch checkpoint: say which backbone it is with --arch "
                          "(e.g. --arch resnet20)")
    if args.overrides:
        raise ConfigError("jinterp demo takes no --set; run a method's own command (e.g. jinterp cladec --set ...) "
                          "to change its settings")
    size = 64
    if args.data and not args.data.startswith("synthparts"):
        size = 32  # the real sets in ../shared are 32 px (CIFAR) or 28 px upscaled
    from jinterp.core import config as cfglib
    from jinterp.core.run import check_workdir, load_config

    check_workdir(args.workdir)
    if args.config in cfglib.PRESETS:
        s = DemoSettings(data=args.data, arch=args.arch or "convnet", weights=args.weights or "", seed=args.seed,
                         quick=bool(args.quick), preset=args.config, image_size=size, methods=methods,
                         model=model, layers=layers, head=args.head or "")
    else:  # a saved config.json: the demo exactly as it ran
        s = load_config(DemoSettings, args.config, method="demo")
    summary = run_demo(s, args.workdir, restart=getattr(args, "restart", False))
    ok = [m for m, r in summary["methods"].items() if r["status"] == "ok"]
    print(f"jinterp demo: {len(ok)}/{len(s.methods)} methods ran ({', '.join(ok) or 'none'}) in "
          f"{summary['total_s']:.0f} s; report: {Path(args.workdir) / summary['report']}")
    for m, r in summary["methods"].items():
        if r["status"] != "ok":
            print(f"  {m}: {r['status']}: {r.get('reason') or r.get('error')}")
    return 1 if summary["failed"] else 0
