"""The CSG program: train a CSG model and a standard baseline from the same start, evaluate both.

    from jinterp.methods.csg import CSGConfig, run
    results = run(CSGConfig.tiny(), "runs/csg")

Steps: load data; build the backbone (random init, ``weights``, or a pretrained backbone trained first into
``<workdir>/backbone``); train the CSG model (alternating standard/gated epochs) and the standard baseline
(standard epochs only) from the same variables and seed; evaluate both, ungated, on the test split: accuracy,
MIS (JAX kNN MI, scikit-learn's estimator), gate density, label leak through the gate (CSG), GradMap / CAM /
ActivMap IoU against the object masks (when the data has them), and the reconstructed adversarial-detection
protocol (FGSM, PGD; ROC-AUC of the gate detector vs the empirical-profile detector of the baseline). Writes
``config.json``, ``metrics.jsonl`` (one line per epoch and run), ``csg_params.npz`` + ``gate.npy``,
``baseline_params.npz``, ``figures/*.png`` and ``results.json``; returns the results dict.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import backbones, data
from jinterp.core import tensorboard as tb
from jinterp.core.config import to_dict
from jinterp.core.run import Run, backbone_stage, check_weights_fit, data_fingerprint, user_model_stage
from jinterp.core.train_backbone import normalization_stats
from jinterp.errors import ConfigError, WeightsError
from jinterp.methods.csg import adversarial as adv
from jinterp.methods.csg import gate as gates
from jinterp.methods.csg import localization as loc
from jinterp.methods.csg.config import CSGConfig
from jinterp.methods.csg.train import Trainer
from jinterp.metrics import information
from jinterp.models import takes_edits
from jinterp.models.given import with_model

RESULTS_FILE = "results.json"


def data_spec(cfg: CSGConfig) -> str:
    """The load spec; a bare ``synthparts`` gets the config's image size and split sizes."""
    return data.with_synthparts_defaults(cfg.data, size=cfg.image_size, n_train=cfg.train_size or None,
                                         n_test=cfg.test_size or None)


def _model_kwargs(cfg: CSGConfig) -> dict:
    return {"widths": cfg.widths} if cfg.widths and cfg.arch == "convnet" else {}


def _backbone_variables(cfg: CSGConfig, model, image_shape, num_classes: int, r: Run,
                        train_ds) -> tuple[dict, str]:
    """Stage ``backbone``: random init (seed), ``weights``, or a backbone pretrained into ``<workdir>/backbone``."""
    init = backbones.init(model, jax.random.fold_in(jax.random.key(cfg.seed), 0), image_shape)
    if not cfg.weights and not cfg.pretrain:
        r.stage("backbone", fields={"arch": cfg.arch, "widths": cfg.widths, "seed": cfg.seed, "init": "random"}
                ).finish()
        return init, "random init (seed)"
    tb = None
    if not cfg.weights:
        from jinterp.core import config as cfglib

        tb = cfglib.preset(cfglib.TrainBackboneConfig, cfg.pretrain_preset)
        tb = dataclasses.replace(tb, arch=cfg.arch, widths=cfg.widths, data=cfg.data, image_size=cfg.image_size,
                                 train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.seed,
                                 num_classes=num_classes)
    loaded, meta, path, _ = backbone_stage(r, arch=cfg.arch, weights=cfg.weights, train_cfg=tb,
                                           progress=False)
    check_weights_fit(path, meta, num_classes=num_classes, image_shape=image_shape, data_spec=data_spec(cfg))
    want = jax.tree_util.tree_flatten_with_path(init)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    bad = [jax.tree_util.keystr(p) for p, x in want if p not in have or tuple(have[p].shape) != tuple(x.shape)]
    if bad:
        raise WeightsError(f"weights {path} do not fit {cfg.arch} with {num_classes} classes "
                           f"(first mismatches: {bad[:3]}); check arch/widths and the data's classes")
    return jax.tree_util.tree_unflatten(jax.tree.structure(init),
                                        [jnp.asarray(have[p], x.dtype) for p, x in want]), str(path)


def _batched(fn, arrays: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """Applies a jitted ``fn(*batch_arrays) -> tuple`` over fixed-size (padded) batches; host outputs."""
    n = arrays[0].shape[0]
    outs = None
    for i in range(0, n, batch):
        chunk = [a[i:i + batch] for a in arrays]
        m = chunk[0].shape[0]
        if m < batch:
            chunk = [np.concatenate([c, np.repeat(c[:1], batch - m, 0)]) for c in chunk]
        res = jax.device_get(fn(*[jnp.asarray(c) for c in chunk]))
        res = [np.asarray(r)[:m] for r in res]
        outs = [[r] for r in res] if outs is None else [o + [r] for o, r in zip(outs, res, strict=True)]
    return [np.concatenate(o) for o in outs]


def run(cfg: CSGConfig, workdir: str | Path, *, progress: bool = True, restart: bool = False,
        model: Any = None, variables: Any = None) -> dict[str, Any]:
    """Runs the whole method (see the module docstring); returns and writes ``results.json``.

    Stages of the :class:`~jinterp.core.run.Run`: ``backbone`` (resumable when pretrained here), then ``csg``
    (training both models, evaluation and outputs; recomputed whenever its fingerprint changes).

    ``model``, ``variables``: a model passed in Python instead of ``cfg.model``/``cfg.arch`` (a converted
    ``(model, variables)`` pair, a Linen module and its variables, an NNX or PyTorch module); it runs through the
    same stage as ``--model`` and its digest is in every stage's fingerprint (:mod:`jinterp.models.given`).
    """
    cfg = with_model(cfg, model, variables)
    cfg.validate()
    if cfg.seeds > 1:  # the top workdir is a run too: checked, locked, its config recorded, storage errors named
        with Run(workdir, cfg, method="csg", restart=restart) as top:
            top.save_record()
            return _run_seeds(cfg, top, progress, restart)
    with Run(workdir, cfg, method="csg", restart=restart) as r:
        return _run(cfg, r, progress)


def _run_seeds(cfg: CSGConfig, top: Run, progress: bool, restart: bool) -> dict[str, Any]:
    """``cfg.seeds`` whole runs (seeds ``seed, seed+1, …``, each in ``<workdir>/seed_<s>``; the trainer carries one
    model per run, so this is a loop over seeds at the program level, not a vmap). ``results.json`` holds every
    number's mean over seeds (``models``), its standard deviation (``models_std``, ddof 0) and ``verdicts``."""
    workdir = top.workdir
    per_seed = []
    for i in range(cfg.seeds):
        sub = dataclasses.replace(cfg, seeds=1, seed=cfg.seed + i)
        with Run(workdir / f"seed_{sub.seed}", sub, method="csg", restart=restart) as r:
            per_seed.append(_run(sub, r, progress))
    out = dict(per_seed[0])
    models = [res["models"] for res in per_seed]
    out["models"] = _tree_stat(models, np.mean)
    out["models_std"] = _tree_stat(models, np.std)
    out["seeds"] = [cfg.seed + i for i in range(cfg.seeds)]
    out["per_seed_results"] = [str(workdir / f"seed_{s}" / RESULTS_FILE) for s in out["seeds"]]
    out["times"] = _tree_stat([res["times"] for res in per_seed], np.sum)
    out["verdicts"] = _verdicts(out["models"], out["models_std"])
    top.write_json(RESULTS_FILE, out, default=_json_default)
    return out


def _tree_stat(trees: list, fn):
    """``fn`` over the seeds of every numeric leaf (lists of numbers elementwise); other leaves from the first."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _tree_stat([t[k] for t in trees], fn) for k in first if all(isinstance(t, dict) and k in t
                                                                               for t in trees)}
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)) or (isinstance(first, list) and first and
                                           all(isinstance(v, (int, float)) for v in np.ravel(np.asarray(
                                               first, dtype=object)))):
        try:
            return np.asarray(fn(np.asarray(trees, np.float64), axis=0)).tolist()
        except ValueError:  # ragged across seeds
            return first
    return first


def _verdicts(mean: dict, std: dict) -> dict[str, str]:
    """CSG against standard training, in words: a win counts only beyond the seeds' spread (√(σ²_csg + σ²_std))."""
    from jinterp.metrics import baselines

    if "csg" not in mean or "standard" not in mean:
        return {}
    c, s, cs, ss = mean["csg"], mean["standard"], std["csg"], std["standard"]

    def one(label, a, b, sa, sb, lower=False, base="standard training"):
        if not all(isinstance(v, (int, float)) for v in (a, b, sa, sb)):
            return None
        margin = float(np.hypot(sa, sb))
        v = baselines.verdict(f"{label} (mean over seeds, ±{sa:.2g})", a, {base: b}, lower_is_better=lower,
                              margin=margin)
        return v["text"] + ("" if v["beats_baselines"] else f" The difference is within the seeds' spread "
                            f"({margin:.2g}) or against CSG.")

    out = {"accuracy": one("CSG accuracy", c["accuracy"], s["accuracy"], cs["accuracy"], ss["accuracy"]),
           "mis": one("CSG MIS (higher: more class-specific filters)", c["mis"], s["mis"], cs["mis"], ss["mis"])}
    for m, v in (c.get("localization") or {}).items():
        if isinstance(v, dict) and "iou" in v and "iou" in s.get("localization", {}).get(m, {}):
            out[f"localization_{m}"] = one(f"CSG {m} localization IoU", v["iou"], s["localization"][m]["iou"],
                                           cs["localization"][m]["iou"], ss["localization"][m]["iou"])
    for attack, v in (c.get("adversarial") or {}).items():
        if isinstance(v, dict) and isinstance(v.get("auc_gate"), (int, float)):
            sd = cs["adversarial"][attack]
            out[f"adversarial_{attack}"] = one(
                f"CSG gate detector AUC ({attack})", v["auc_gate"], v.get("auc_empirical"), sd.get("auc_gate"),
                sd.get("auc_empirical"), base="the empirical class-profile detector")
    return {k: t for k, t in out.items() if t}


def _run(cfg: CSGConfig, rn: Run, progress: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    workdir = rn.workdir
    times: dict[str, float] = {}

    t = time.perf_counter()
    spec = data_spec(cfg)
    train_ds, test_ds = data.load(spec, "train"), data.load(spec, "test")
    num_classes = train_ds.num_classes
    image_shape = tuple(int(d) for d in train_ds.images.shape[1:])
    times["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if cfg.model:  # a user's model: its converted parameters are trained; gate site and head named by the user
        if not (cfg.gate_layer and cfg.head):
            raise ConfigError(f"with --model {cfg.model} name the gated layer and the classifier head: --set "
                              "gate_layer=MODULE (the last conv stage's output) --set head=MODULE (the final linear)")
        model, variables, minfo, binfo = user_model_stage(rn, model=cfg.model, weights=cfg.weights,
                                                          image_shape=image_shape, num_classes=num_classes,
                                                          data_spec=spec)
        source = binfo["weights"]
        if not takes_edits(model):
            raise ConfigError(f"CSG gates the output of {cfg.gate_layer} inside the model through edits=, which a "
                              f"{type(model).__name__} does not take; pass the model as a PyTorch, Linen or NNX "
                              "module (or from_torch/from_linen/from_nnx), or use a built-in arch (cfg.arch)")
        site = gates.user_gate_site(minfo.layer_names, variables["params"], cfg.gate_layer, cfg.head)
        if cfg.normalization == "arch":
            cfg = dataclasses.replace(cfg, normalization=binfo["normalization"])
    else:
        model = backbones.create(cfg.arch, num_classes, **_model_kwargs(cfg))
        variables, source = _backbone_variables(cfg, model, image_shape, num_classes, rn, train_ds)
        site = gates.gate_site(model)
    times["backbone_s"] = time.perf_counter() - t
    # Everything below is recomputed in one go (no checkpoints): outputs of other settings go first.
    stage = rn.stage("csg", fields=to_dict(cfg), inputs={"backbone": rn.upstream("backbone"),
                                                         "data": data_fingerprint(spec)},
                      paths=["metrics.jsonl", "csg_params.npz", "gate.npy", "baseline_params.npz", "figures",
                            RESULTS_FILE])
    (workdir / "figures").mkdir(parents=True, exist_ok=True)
    k = gates.num_filters(model, site, variables, image_shape)
    mean, std = normalization_stats(cfg)
    normalize = lambda x: (x.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)

    n_eval = min(cfg.eval_size or len(test_ds), len(test_ds))
    ev = test_ds.take(np.arange(n_eval))
    bs = cfg.eval_batch_size

    def apply_fn(params, model_state):
        return lambda x: gates.forward(model, site, {"params": params, **model_state}, x, train=False)[:2]

    @jax.jit
    def infer(params, model_state, x):
        logits, a = apply_fn(params, model_state)(normalize(x))
        return logits, a.mean(axis=(1, 2))

    def test_accuracy(state) -> dict:
        f = jax.jit(lambda x: infer(state["params"]["backbone"], state["model_state"], x))
        logits, _ = _batched(f, [test_ds.images], bs)
        return {"test_accuracy": float((logits.argmax(-1) == test_ds.labels).mean())}

    metrics_path = workdir / "metrics.jsonl"
    from jinterp.core.run import append_text, is_primary, write_file  # process 0 writes, every process waits

    write_file(metrics_path, lambda tmp: tmp.write_text(""))
    # --tensorboard: the same per-epoch scalars (tags <run>/<key>, step = epoch), started afresh like metrics.jsonl
    tb.truncate_after(workdir / tb.TB_DIR, -1)
    events = tb.EventWriter(workdir / tb.TB_DIR) if tb.is_enabled() and is_primary() else None

    def logger(run_name):
        def log(rec):
            append_text(metrics_path, json.dumps({"run": run_name, **rec}) + "\n")
            if events is not None:
                events.write(rec["epoch"], tb.scalars_of(run_name, rec))
        return log

    # ---- training: CSG and the standard baseline from the same variables, data order and seed
    runs: dict[str, dict] = {}
    records: dict[str, list] = {}
    for name, gated in (("csg", True), ("standard", False)):
        if name == "standard" and not cfg.baseline:
            continue
        t = time.perf_counter()
        trainer = Trainer(model, site, cfg, num_classes, mean, std, baseline=not gated)
        state = trainer.init_state(variables, k)
        state, recs = trainer.fit(state, train_ds.images, train_ds.labels, gated=gated, eval_fn=test_accuracy,
                                  log=logger(name), progress=progress, desc=f"csg:{name}")
        times[f"train_{name}_s"] = time.perf_counter() - t
        runs[name] = {"state": state, "trainable_std": len(trainer.keys["std"]),
                      "trainable_csg": len(trainer.keys["csg"])}
        records[name] = recs
    runs = randomize_trained(cfg, model, image_shape, runs)

    # ---- evaluation
    results: dict[str, Any] = {"data": spec, "arch": cfg.model or cfg.arch, "backbone": source,
                               "randomize_backbone": cfg.randomize_backbone,
                               "gate_layer": site.layer,
                               "num_filters": k, "num_classes": num_classes, "eval_size": n_eval,
                               "protocol_note": "adversarial detection: reconstructed protocol [INF], not the "
                                                "paper's (no public code or text)"}
    # the object of each image's class (voc: its class's boxes, pascal_part: its class's masks; loc.object_masks)
    gt_masks = loc.object_masks(test_ds)[:n_eval] if "object" in test_ds.masks else None
    has_masks = gt_masks is not None
    per_model: dict[str, dict] = {}
    train_pooled_n = min(len(train_ds), 2000)
    for name, r in runs.items():
        t = time.perf_counter()
        st = r["state"]
        params, ms = st["params"]["backbone"], st["model_state"]
        f = jax.jit(lambda x, p=params, m=ms: infer(p, m, x))
        logits, pooled = _batched(f, [ev.images], bs)
        pred = logits.argmax(-1)
        out: dict[str, Any] = {"accuracy": float((pred == ev.labels).mean()),
                               "final_test_accuracy": records[name][-1]["test_accuracy"],
                               "best_test_accuracy": max(x["test_accuracy"] for x in records[name])}
        tm = time.perf_counter()
        # MIS on the gated layer's own maps (filter_mis refuses logits; spec B.5.2 step 1)
        maps_fn = jax.jit(lambda x, p=params, m=ms: (apply_fn(p, m)(normalize(x))[1],))
        (maps,) = _batched(maps_fn, [ev.images], bs)
        mis, mi_mat = information.filter_mis(maps, ev.labels, num_classes, n_neighbors=cfg.mi_neighbors,
                                             random_state=cfg.mi_random_state)
        del maps
        out["mis"] = mis
        out["mis_time_s"] = time.perf_counter() - tm
        gate = np.asarray(st["params"]["gate"])
        if name == "csg":
            out["density"] = float(gates.density(gate))
            out["gate_filters_per_class"] = np.bincount(gate.argmax(1), minlength=num_classes).tolist()
            out["gate_ones_per_filter"] = float((gate > 0.5).sum(1).mean())
            out["label_leak"] = _label_leak(model, site, params, ms, gate, ev, normalize, num_classes, cfg.seed, bs)
        # localization
        if has_masks:
            tl = time.perf_counter()
            fc = site.fc
            lres = loc.evaluate(apply_fn(params, ms), ev.images, gt_masks, ev.labels, num_classes,
                                fc_kernel=params[fc]["kernel"] if fc else None, normalize=normalize,
                                batch_size=min(bs, 64), n_top=cfg.n_top_channel, blur_kernel=cfg.grad_blur_kernel,
                                blur_sigma=cfg.grad_blur_sigma, grad_threshold=cfg.grad_threshold,
                                grad_success=cfg.grad_iou_success, cam_fraction=cfg.cam_top_fraction,
                                cam_success=cfg.cam_iou_success, activ_fraction=cfg.activ_top_fraction,
                                activ_success=cfg.activ_iou_success)
            out["localization"] = {kk: v for kk, v in lres.items() if not kk.endswith("image_iou")}
            out["localization_time_s"] = time.perf_counter() - tl
        # adversarial detection (reconstructed protocol)
        ta = time.perf_counter()
        _, train_pooled = _batched(f, [train_ds.images[:train_pooled_n]], bs)
        emp = adv.empirical_profile(jnp.asarray(train_pooled), jnp.asarray(train_ds.labels[:train_pooled_n]),
                                    num_classes)
        profiles = {"empirical": emp}
        if name == "csg":
            profiles["gate"] = jnp.asarray(gate)
        out["adversarial"] = _adversarial(cfg, model, site, params, ms, normalize, ev, pred, profiles, bs)
        out["adversarial_time_s"] = time.perf_counter() - ta
        out["eval_time_s"] = time.perf_counter() - t
        out["mi_matrix"] = mi_mat.tolist()
        per_model[name] = out
        per_model[name]["_pooled"] = pooled
    results["models"] = {n: {kk: v for kk, v in m.items() if not kk.startswith("_")} for n, m in per_model.items()}
    results["training"] = {n: {"epochs": recs, "csg_epochs": [x["epoch"] for x in recs if x["path"] == "csg"]}
                           for n, recs in records.items()}
    results["issue6_observation"] = _issue6(records.get("csg", []))

    # ---- outputs
    from jinterp.backbones import torch_import

    meta = {"arch": cfg.arch, "num_classes": num_classes, "image_shape": list(image_shape), "data": spec,
            "normalization": cfg.normalization, "source": "jinterp csg", "config": to_dict(cfg)}
    for name, r in runs.items():
        st = r["state"]
        saved = jax.tree.map(np.asarray, {"params": st["params"]["backbone"], **st["model_state"]})
        write_file(workdir / f"{'csg' if name == 'csg' else 'baseline'}_params.npz",
                   lambda tmp, v=saved, n=name: torch_import.save_variables(tmp, v, {**meta, "run": n}))
    if "csg" in runs:
        write_file(workdir / "gate.npy", lambda tmp: np.save(tmp, np.asarray(runs["csg"]["state"]["params"]["gate"])))
    tf = time.perf_counter()
    results["figures"] = _figures(cfg, workdir, runs, records, site, ev, train_ds.class_names, normalize, apply_fn,
                                  gt_masks)
    times["figures_s"] = time.perf_counter() - tf
    times["total_s"] = time.perf_counter() - t_start
    results["times"] = times
    rn.write_json(RESULTS_FILE, results, default=_json_default)
    stage.finish()
    return results


def randomize_trained(cfg: CSGConfig, model, image_shape, runs: dict[str, dict]) -> dict[str, dict]:
    """``randomize_backbone``: Adebayo et al.'s model-randomization check for a method that trains the network itself.

    Re-initializing before training would only change the starting draw (the tiny preset already starts from
    random weights), so the check re-initializes the *trained* models' backbone weights (same architecture, one
    fresh draw from :func:`jinterp.metrics.baselines.randomized_weights`, shared by both models; CSG's learned gate
    kept) before the evaluation: MIS, localization and the gate detector of a network that learned nothing. A
    number that survives it is not about what CSG trained [I: jinterp's reading of the check for a training
    method]. Each run gets ``"randomized": True``. Unchanged when the flag is off.
    """
    if not cfg.randomize_backbone:
        return runs
    from jinterp.metrics.baselines import randomized_weights

    fresh = randomized_weights(model, cfg.seed, image_shape)
    out = {}
    for name, r in runs.items():
        st = dict(r["state"])
        st["params"] = {**st["params"], "backbone": fresh["params"]}
        st["model_state"] = {k: v for k, v in fresh.items() if k != "params"}
        out[name] = {**r, "state": st, "randomized": True}
    return out


def randomization_check(trained: dict, randomized: dict) -> dict[str, dict]:
    """CSG's interpretability numbers on the trained CSG model against the same run with ``randomize_backbone``
    (:func:`jinterp.metrics.baselines.randomization_verdict`): MIS, each localization IoU, the gate detector's AUC."""
    from jinterp.metrics import baselines

    a, b = trained.get("models", {}).get("csg"), randomized.get("models", {}).get("csg")
    if not a or not b:
        return {}
    sd = (trained.get("models_std") or {}).get("csg") or {}  # several seeds: their spread is the margin

    def spread(*path) -> float:
        x = sd
        for k in path:
            x = x.get(k, {}) if isinstance(x, dict) else {}
        return float(x) if isinstance(x, (int, float)) else 0.0

    verdict = functools.partial(baselines.randomization_verdict, lower_is_better=False)
    out = {"mis": verdict("CSG MIS (higher: more class-specific filters)", a["mis"], b["mis"], margin=spread("mis"))}
    for m, v in (a.get("localization") or {}).items():
        w = (b.get("localization") or {}).get(m)
        if isinstance(v, dict) and isinstance(w, dict) and "iou" in v and "iou" in w:
            out[f"localization_{m}"] = verdict(f"CSG {m} localization IoU", v["iou"], w["iou"],
                                               margin=spread("localization", m, "iou"))
    for attack, v in (a.get("adversarial") or {}).items():
        w = (b.get("adversarial") or {}).get(attack)
        if isinstance(v, dict) and isinstance(w, dict) and all(isinstance(x.get("auc_gate"), (int, float))
                                                               for x in (v, w)):
            out[f"adversarial_{attack}"] = verdict(f"CSG gate detector AUC ({attack})", v["auc_gate"], w["auc_gate"],
                                                   margin=spread("adversarial", attack, "auc_gate"))
    return out


def _json_default(o):
    if isinstance(o, np.ndarray | np.generic):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def _label_leak(model, site, params, ms, gate, ev, normalize, num_classes, seed, bs) -> dict:
    """Issue #6: gate each test image with a *wrong* class's column and see how often the gated head then
    predicts that class (the gate pattern alone carries the label), vs the true column."""
    rng = np.random.default_rng(seed)
    wrong = (ev.labels + rng.integers(1, num_classes, len(ev.labels))) % num_classes

    @jax.jit
    def gated(x, y):
        logits, _, _ = gates.forward(model, site, {"params": params, **ms}, normalize(x), train=False,
                                     gate=jnp.asarray(gate), labels=y)
        return (logits.argmax(-1),)

    (p_true,) = _batched(gated, [ev.images, ev.labels], bs)
    (p_wrong,) = _batched(gated, [ev.images, wrong.astype(np.int32)], bs)
    return {"gated_true_label_accuracy": float((p_true == ev.labels).mean()),
            "wrong_gate_follows_gate_rate": float((p_wrong == wrong).mean()),
            "wrong_gate_keeps_true_rate": float((p_wrong == ev.labels).mean())}


def _issue6(recs: list[dict]) -> dict:
    if not recs:
        return {}
    csg = [r for r in recs if r["path"] == "csg"]
    std = [r for r in recs if r["path"] == "std" and r["epoch"] > (csg[0]["epoch"] if csg else 0)]
    after = []
    for r in csg:
        prev = [x for x in recs if x["epoch"] == r["epoch"] - 1]
        if prev:
            after.append(r["test_accuracy"] - prev[0]["test_accuracy"])
    return {"mean_train_accuracy_gated_epochs": float(np.mean([r["train_accuracy"] for r in csg])) if csg else None,
            "mean_train_accuracy_std_epochs_after_warmup": float(np.mean([r["train_accuracy"] for r in std]))
            if std else None,
            "mean_test_accuracy_change_over_gated_epoch": float(np.mean(after)) if after else None}


def _adversarial(cfg, model, site, params, ms, normalize, ev, pred, profiles, bs) -> dict:
    correct = np.nonzero(pred == ev.labels)[0][: cfg.adv_size]
    if correct.size == 0:
        return {"note": "no correctly classified images"}
    x = ev.images[correct]
    y = ev.labels[correct].astype(np.int32)

    def logits_fn(x01):
        return gates.forward(model, site, {"params": params, **ms}, _norm01(x01, normalize), train=False)[0]

    @jax.jit
    def observe(x01):
        logits, a, _ = gates.forward(model, site, {"params": params, **ms}, _norm01(x01, normalize), train=False)
        return logits.argmax(-1), a.mean(axis=(1, 2))

    fg = jax.jit(lambda x, y: (adv.fgsm(logits_fn, x, y, cfg.adv_eps),))
    pg = jax.jit(lambda x, y, key: (adv.pgd(logits_fn, x, y, cfg.adv_eps, cfg.pgd_alpha, cfg.pgd_steps,
                                            key if cfg.pgd_random_start else None),))
    x01 = x.astype(np.float32) / 255.0
    key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
    (x_fgsm,) = _batched(fg, [x01, y], bs)
    (x_pgd,) = _batched(lambda a, b: pg(a, b, key), [x01, y], bs)
    clean_pred, clean_pool = _batched(observe, [x01], bs)
    out: dict[str, Any] = {"n_images": int(len(y)), "eps": cfg.adv_eps, "pgd_steps": cfg.pgd_steps}
    for attack, xa in (("fgsm", x_fgsm), ("pgd", x_pgd)):
        a_pred, a_pool = _batched(observe, [xa], bs)
        ok = a_pred != y
        res = {"success_rate": float(ok.mean()), "linf": float(np.abs(xa - x01).max())}
        for pname, prof in profiles.items():
            s_clean = np.asarray(adv.detector_score(jnp.asarray(clean_pool), jnp.asarray(clean_pred), prof))
            s_adv = np.asarray(adv.detector_score(jnp.asarray(a_pool[ok]), jnp.asarray(a_pred[ok]), prof))
            res[f"auc_{pname}"] = adv.roc_auc(s_adv, s_clean) if ok.any() else None
        out[attack] = res
    return out


def _norm01(x01, normalize):
    """[0, 1] float images -> the model's normalized input (``normalize`` expects 0..255)."""
    return normalize(x01 * 255.0)


def _figures(cfg, workdir, runs, records, site, ev, class_names, normalize, apply_fn, gt_masks) -> dict:
    from jinterp.report.figures import _common
    from jinterp.report.figures import csg as figs

    out = {}
    if "csg" in runs:
        st = runs["csg"]["state"]
        fc = site.fc
        head = lambda s: np.asarray(s["params"]["backbone"][fc]["kernel"]) if fc else None
        fig = figs.gate_matrix(np.asarray(st["params"]["gate"]), class_names, head_csg=head(st),
                               head_std=head(runs["standard"]["state"]) if "standard" in runs else None)
        out["gate_matrix"] = str(_common.save(fig, workdir / "figures" / "gate_matrix.png"))
    out["training_curves"] = str(_common.save(figs.training_curves(records), workdir / "figures" /
                                              "training_curves.png"))
    if gt_masks is not None:
        n = min(6, len(ev))
        idx = np.concatenate([np.nonzero(ev.labels == c)[0][:1] for c in range(ev.num_classes)])[:n]
        x = jnp.asarray(ev.images[idx])
        y = jnp.asarray(ev.labels[idx])
        maps = {}
        for name, r in runs.items():
            p, ms = r["state"]["params"]["backbone"], r["state"]["model_state"]
            ap = apply_fn(p, ms)

            @jax.jit
            def map_fn(x, y, ap=ap, p=p):
                _, a = ap(normalize(x))
                top = loc.top_channels(a.sum((1, 2)), y, ev.num_classes, 1)[y, 0]
                g = loc.gradmap_maps(ap, normalize(x), top, cfg.grad_blur_kernel, cfg.grad_blur_sigma)
                cam = loc.cam_maps(a, p[site.fc]["kernel"], y, x.shape[1:3]) if site.fc else g
                return cam, g

            cam, g = map_fn(x, y)
            if site.fc:
                maps[f"CAM {name}"] = np.asarray(cam)
            maps[f"GradMap {name}"] = np.asarray(g)
        fig = figs.localization_maps(np.asarray(ev.images[idx]), gt_masks[idx], maps,
                                     [class_names[int(c)] for c in ev.labels[idx]])
        out["localization"] = str(_common.save(fig, workdir / "figures" / "localization.png"))
    return out
