"""ClaDec end to end: data -> backbone -> activations -> RefAE + α-sweep decoders -> evaluation -> figures.

    from jinterp.methods.cladec import ClaDecConfig, run
    results = run(ClaDecConfig.tiny(), "runs/cladec")      # also writes <workdir>/results.json and figures/

Work directory:
  ``config.json``; ``data/prepared.npz`` (the resized/subset splits the backbone is trained on, when it is);
  ``backbone/`` (``train-backbone``'s run, ``params.npz``) unless ``weights`` is given;
  ``layers/<layer>/{refae,cladec,retrain}/metrics.jsonl`` and ``refae.npz``, ``cladec.npz`` (decoder params,
  stacked over α); ``figures/grid_<layer>.png``, ``figures/tradeoff.png``; ``results.json``.
A rerun in the same directory reuses every finished stage (backbone, RefAE, sweep) from its saved params when its
fingerprint (the config fields, inputs and code it depends on; see ``jinterp.core.run``) is the same; a stage of
other settings is recomputed (or, when it holds checkpoints, refused unless ``restart``). ``config.json`` records
which settings produced each stage.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp import backbones, data
from jinterp.core import features
from jinterp.core.config import to_dict
from jinterp.core.run import Run, backbone_stage, check_weights_fit, data_fingerprint, user_model_stage
from jinterp.errors import ConfigError, DataError, LayerError, WeightsError
from jinterp.methods.cladec import evaluation, refae, training
from jinterp.methods.cladec.config import ClaDecConfig
from jinterp.methods.cladec.decoder import init_decoder, make_decoder, num_params
from jinterp.metrics import reconstruction as rec
from jinterp.models.given import with_model

RESULTS_FILE = "results.json"
RETRAIN_NOTE = ("retrain protocol reconstructed from the third-party Keras code (tomtuamnuq/cladec-mnist "
                "src/eval.py): a fresh classifier per source trained on reconstructed training images; the paper's "
                "own protocol (epochs, testing on reconstructions or originals) is unverified, so both test sets "
                "are reported")


# ------------------------------------------------------------------------------------------------- data
# The retrain column compares classifiers trained on reconstructions; it says something only when the same budget
# trains a classifier on the original images to (nearly) the backbone's own accuracy (issue #20: the tiny retrain
# gave the original-image classifier 23 %, so the column compared noise).
RETRAIN_MIN_SHARE = 0.9


def retrain_meaningful(original_retrain_accuracy: float, backbone_accuracy: float,
                       min_share: float = RETRAIN_MIN_SHARE) -> dict[str, Any]:
    """Is the retrain budget enough? The classifier retrained on original images must reach ``min_share`` of the
    backbone's test accuracy. Returns ``{"meaningful", "original_retrain_accuracy", "backbone_accuracy", "text"}``."""
    ok = bool(original_retrain_accuracy >= min_share * backbone_accuracy)
    head = "meaningful" if ok else "not meaningful"
    text = (f"retrain column {head}: the classifier retrained on original images reaches "
            f"{original_retrain_accuracy:.3f} vs the backbone's {backbone_accuracy:.3f}"
            + ("" if ok else f" (below {min_share:.0%} of it; raise retrain_epochs)"))
    return {"meaningful": ok, "original_retrain_accuracy": float(original_retrain_accuracy),
            "backbone_accuracy": float(backbone_accuracy), "text": text}


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """PyTorch's legacy ``F.interpolate(mode="nearest", size=size)``: source index ``floor(i · in / out)``
    (not ``jax.image.resize``'s half-pixel centres, which pick other rows). ``(N, H, W, C)`` -> ``(N, s, s, C)``."""
    n, h, w, c = images.shape
    rows = np.floor(np.arange(size) * (h / size)).astype(np.int64)
    cols = np.floor(np.arange(size) * (w / size)).astype(np.int64)
    return images[:, rows][:, :, cols]


def data_spec(cfg: ClaDecConfig) -> str:
    """``cfg.data`` with synthparts' size/split sizes filled in from the config (other sources unchanged)."""
    return data.with_synthparts_defaults(cfg.data, size=cfg.image_size or None, n_train=cfg.train_size or None,
                                         n_test=cfg.test_size or None)


def _prepare(ds: data.Dataset, size: int, limit: int) -> data.Dataset:
    if limit and len(ds) > limit:
        ds = ds.take(np.arange(limit))
    if size and ds.images.shape[1:3] != (size, size):
        ds = dataclasses.replace(ds, images=resize_nearest(ds.images, size), masks={}, landmarks=None,
                                 landmark_visible=None)
    return ds


def load_data(cfg: ClaDecConfig) -> tuple[data.Dataset, data.Dataset]:
    spec = data_spec(cfg)
    train_ds = _prepare(data.load(spec, "train"), cfg.image_size, cfg.train_size)
    test_ds = _prepare(data.load(spec, "test"), cfg.image_size, cfg.test_size)
    if len(train_ds) < cfg.batch_size:
        raise DataError(f"{spec}: {len(train_ds)} training images < batch_size {cfg.batch_size}; "
                        "use a smaller --set batch_size or more data")
    return train_ds, test_ds


# --------------------------------------------------------------------------------------------- backbone
def _model_kwargs(cfg: ClaDecConfig, meta: dict | None = None) -> dict:
    if cfg.arch != "convnet":
        return {}
    widths = tuple(cfg.backbone.widths)
    saved = tuple((meta or {}).get("widths") or ((meta or {}).get("config") or {}).get("widths") or ())
    widths = saved or widths  # a weights file knows its own widths
    return {"widths": widths} if widths else {}


def check_layers(cfg: ClaDecConfig, num_classes: int, image_shape: tuple[int, int, int]) -> dict[str, tuple]:
    """Validate layer names and decoder shapes before any training; returns ``{layer: act_shape}``. A user's
    ``cfg.model`` is checked once loaded (:func:`check_user_layers`)."""
    if cfg.model:
        return {}
    model = backbones.create(cfg.arch, num_classes, **_model_kwargs(cfg))
    shapes = backbones.variable_shapes(model, image_shape)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes, x)
    valid = backbones.layer_names(cfg.arch, **_model_kwargs(cfg))
    for layer in cfg.layers:
        if layer not in feats:
            backbones.check_layers(valid, [layer])  # raises LayerError listing the names
            raise LayerError(f"unknown layer {layer!r}; valid layers: {', '.join(valid)}")
    out = {layer: tuple(feats[layer].shape[1:]) for layer in cfg.layers}
    for layer, shape in out.items():
        make_decoder(shape, image_shape, cfg.base_width, layer)  # ShapeError when unreachable
    return out


def check_user_layers(cfg: ClaDecConfig, model_info, act_shapes: dict[str, tuple]) -> None:
    """A user model's ``cfg.layers``: module paths of ``model_info`` (unknown: the valid names and the nearest
    match), each decodable to the image shape (``act_shapes``: the loaded model's feature shapes)."""
    from jinterp.models import check_layers as check_model_layers

    check_model_layers(model_info, cfg.layers)
    for layer in (cfg.layers if act_shapes else ()):
        make_decoder(act_shapes[layer], model_info.image_shape, cfg.base_width, layer)  # ShapeError when unreachable


def get_backbone(cfg: ClaDecConfig, train_ds, test_ds, r: Run, progress: bool) -> tuple[Any, dict, dict]:
    """``(model, variables, info)``: stage ``backbone`` of the run: ``cfg.weights``, or trained into
    ``<workdir>/backbone`` on the prepared (resized/subset) splits, or the user's ``cfg.model`` (``info``: its
    ``normalization`` and ``model_info``)."""
    num_classes = train_ds.num_classes
    image_shape = tuple(int(d) for d in train_ds.images.shape[1:])
    if cfg.model:
        model, variables, minfo, info = user_model_stage(r, model=cfg.model, weights=cfg.weights,
                                                         image_shape=image_shape, num_classes=num_classes,
                                                         data_spec=data_spec(cfg))
        return model, jax.tree.map(jnp.asarray, variables), {**info, "model_info": minfo}
    prepared = r.workdir / "data" / "prepared.npz"

    def prepare() -> None:
        from jinterp.core.run import write_file  # process 0 writes, every process waits

        # kept when present: a resumed training must read the same bytes (np.savez stamps the time into the zip)
        write_file(prepared, lambda tmp: np.savez(tmp, train_x=train_ds.images, train_y=train_ds.labels,
                                                  test_x=test_ds.images, test_y=test_ds.labels), keep_existing=True)

    bcfg = dataclasses.replace(cfg.backbone, arch=cfg.arch, data=f"npz:{prepared}", seed=cfg.seed,
                               num_classes=num_classes)
    inputs = {**data_fingerprint(data_spec(cfg)), "image_size": cfg.image_size, "train_size": cfg.train_size,
              "test_size": cfg.test_size}
    variables, meta, path, info = backbone_stage(r, arch=cfg.arch, weights=cfg.weights, train_cfg=bcfg,
                                                 inputs=inputs, prepare=prepare, extra_paths=["data"],
                                                 progress=progress)
    if cfg.weights:  # never silently degrade: another image size or class count than the file's is an error
        check_weights_fit(path, meta, num_classes=num_classes, image_shape=image_shape, data_spec=data_spec(cfg),
                          same_size=True)
    model = backbones.create(cfg.arch, int(meta.get("num_classes") or num_classes), **_model_kwargs(cfg, meta))
    want = backbones.variable_shapes(model, image_shape)
    ws = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(want), sep="/").items()}
    hs = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(variables), sep="/").items()}
    if ws != hs:
        bad = sorted(k for k in set(ws) | set(hs) if ws.get(k) != hs.get(k))[:5]
        raise WeightsError(f"{path} does not fit {cfg.arch} on {image_shape} images with {num_classes} classes "
                           f"(first differences: {[(k, hs.get(k), ws.get(k)) for k in bad]}); check --set arch, "
                           "image_size and backbone.widths")
    if int(meta.get("num_classes") or num_classes) != num_classes:
        raise WeightsError(f"{path} has {meta.get('num_classes')} classes but the data has {num_classes}")
    variables = jax.tree.map(jnp.asarray, variables)
    return model, variables, info


def randomized_classifier(cfg: ClaDecConfig, model, variables: dict, info: dict, image_shape) -> dict:
    """``randomize_backbone``: the classifier's architecture with re-initialized weights (Adebayo et al.'s
    model-randomization check, :func:`jinterp.metrics.baselines.randomized_weights`) before any decoder sees its
    activations; marks ``info["randomized"]``. The RefAE never uses the classifier's weights, so it is unaffected."""
    if not cfg.randomize_backbone:
        return variables
    from jinterp.metrics.baselines import randomized_weights

    info["randomized"] = True
    return jax.tree.map(jnp.asarray, randomized_weights(model, cfg.seed, image_shape))


def randomization_check(trained: dict, randomized: dict) -> dict[str, dict]:
    """ClaDec's reconstruction error per layer and α on the trained classifier against the same run with
    ``randomize_backbone`` (:func:`jinterp.metrics.baselines.randomization_verdict`, lower is better). Decoding a
    random network's activations can reconstruct as well: then fidelity says nothing about what the classifier
    learned."""
    from jinterp.metrics.baselines import randomization_verdict

    out = {}
    for layer, d in (trained.get("layers") or {}).items():
        other = ((randomized.get("layers") or {}).get(layer) or {}).get("sources") or {}
        for src, v in d.get("sources", {}).items():
            if src.startswith("cladec@") and "mse" in v and "mse" in other.get(src, {}):
                out[f"{layer} {src} mse"] = randomization_verdict(f"{layer} {src} reconstruction MSE", v["mse"],
                                                                  other[src]["mse"], lower_is_better=True)
    return out


def decoder_param_count(decoder) -> int:
    x = jax.ShapeDtypeStruct((1, *decoder.plan.act_shape), jnp.float32)
    return num_params(jax.eval_shape(lambda x: decoder.init(jax.random.key(0), x), x)["params"])


# ------------------------------------------------------------------------------------------- params I/O
def save_tree(path: Path, tree, **meta) -> None:
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}
    from jinterp.core.run import write_file  # process 0 writes, every process waits

    write_file(path, lambda tmp: np.savez(tmp, __meta__=np.array(json.dumps(meta)), **flat))


def load_tree(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        flat = {k: jnp.asarray(z[k]) for k in z.files if k != "__meta__"}
    return traverse_util.unflatten_dict(flat, sep="/"), meta


# ------------------------------------------------------------------------------------------------ stages
def _grid_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """First test image of each class in turn (then the next ones), ``n`` in all: a grid covering the classes."""
    order, seen = [], set()
    for i, y in enumerate(labels):
        if y not in seen:
            seen.add(y)
            order.append(i)
        if len(order) == n:
            break
    rest = [i for i in range(len(labels)) if i not in set(order)]
    return np.asarray((order + rest)[:n], np.int64)


def _stage_config(cfg: ClaDecConfig, stage: str, layer: str) -> dict:
    return {"stage": stage, "layer": layer, **{k: v for k, v in to_dict(cfg).items()
                                                if k not in ("grid_rows", "eval_batch_size", "log_every")}}


def train_refae(cfg, model, image_shape, layer, decoder, train_images, key, layer_dir: Path, progress: bool,
                scheme: str | None = None):
    """Train (or load) the RefAE of one layer; returns ``(reconstruct(images) -> x̂, info)``. ``scheme``: the
    input normalization (default: the arch's)."""
    k_enc, k_dec, k_loop = jax.random.split(key, 3)
    enc_vars = backbones.init(model, k_enc, image_shape)
    dropout = 0.5 if (cfg.faithful and cfg.arch == "vgg11_bn_cladec" and layer == "flat") else 0.0
    encoder = refae.make_encoder(scheme or cfg.arch, model, enc_vars, image_shape, layer, code_dropout=dropout)
    p_enc, stats, frozen = encoder.split(enc_vars)
    n = len(train_images)
    spe, total = training.steps_for(n, cfg.batch_size, cfg.epochs)
    tx = training.torch_adam(training.step_schedule(cfg.lr, cfg.epochs, spe, cfg.lr_decay), cfg.weight_decay)
    path = layer_dir / "refae.npz"
    info: dict[str, Any] = {"encoder_params": num_params(p_enc), "code_dropout": dropout, "steps": total}
    if path.exists():
        saved, meta = load_tree(path)
        params, stats = saved["params"], saved.get("stats", {})
        info.update(meta, loaded=True)
    else:
        params = {"encoder": p_enc, "decoder": init_decoder(decoder, k_dec)}
        state = training.new_state(params, tx, jax.random.key_data(k_loop), stats)
        step = refae.make_refae_step(encoder, decoder, tx)
        res = training.fit(state, step, ({"image": jnp.asarray(train_images)}, frozen), n=n,
                           batch_size=cfg.batch_size, steps=total, seed=cfg.seed + 1, workdir=layer_dir / "refae",
                           desc=f"RefAE {layer}", log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                           config=_stage_config(cfg, "refae", layer), progress=progress)
        params, stats = res.state.params, res.state.model_state
        info.update(train_time_s=res.wall_time_s, final_train_mse=res.last_metrics.get("loss"))
        save_tree(path, {"params": params, "stats": stats} if stats else {"params": params},
                  **{k: v for k, v in info.items() if k != "loaded"})
    apply = refae.make_refae_apply(encoder, decoder)
    bs = cfg.eval_batch_size

    def reconstruct(images: np.ndarray) -> np.ndarray:
        return evaluation.batched(lambda x: apply(params, stats, frozen, jnp.asarray(x)), [images], bs)

    return reconstruct, info


def train_sweep(cfg, model, variables, layer, decoder, train_ds, acts_train, key, layer_dir: Path, progress: bool):
    """Train (or load) the K = len(alphas) decoders of one layer at once; returns ``(stacked params, info)``."""
    alphas = jnp.asarray(cfg.alphas, jnp.float32)
    k_init, k_loop = jax.random.split(key)
    use_ce = cfg.faithful or any(a > 0 for a in cfg.alphas)
    n = len(train_ds)
    spe, total = training.steps_for(n, cfg.batch_size, cfg.epochs)
    tx = training.torch_adam(training.step_schedule(cfg.lr, cfg.epochs, spe, cfg.lr_decay), cfg.weight_decay)
    info: dict[str, Any] = {"steps": total, "classifier_in_loop": use_ce}
    path = layer_dir / "cladec.npz"
    if path.exists():
        saved, meta = load_tree(path)
        if [float(a) for a in meta.get("alphas", [])] != [float(a) for a in cfg.alphas]:
            raise ConfigError(f"{path} was trained for alphas {meta.get('alphas')}, not {list(cfg.alphas)}; "
                              "use a new --workdir")
        info.update(meta, loaded=True)
        return saved["params"], info
    # The same initial decoder for every α, so the sweep differs in α only (common random numbers).
    one = init_decoder(decoder, k_init)
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (len(cfg.alphas), *p.shape)).copy(), one)
    state = training.new_state(params, tx, jax.random.key_data(k_loop))
    classify = evaluation.make_classify(model, cfg.arch)
    step = training.make_sweep_step(decoder, tx, classify=classify, use_ce=use_ce)
    dev = {"image": jnp.asarray(train_ds.images), "label": jnp.asarray(train_ds.labels),
           "act": jnp.asarray(acts_train)}
    res = training.fit(state, step, (dev, alphas, variables if use_ce else {}), n=n, batch_size=cfg.batch_size,
                       steps=total, seed=cfg.seed + 2, workdir=layer_dir / "cladec", desc=f"ClaDec {layer}",
                       log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                       config=_stage_config(cfg, "cladec", layer), progress=progress)
    info.update(train_time_s=res.wall_time_s, alphas=list(cfg.alphas),
                final_train_mse=[res.last_metrics.get(f"rec/{k}") for k in range(len(cfg.alphas))])
    save_tree(path, {"params": res.state.params}, **{k: v for k, v in info.items() if k != "loaded"})
    return res.state.params, info


# -------------------------------------------------------------------------------------------------- run
def run(cfg: ClaDecConfig, workdir: str | Path, *, progress: bool = True, restart: bool = False,
        model: Any = None, variables: Any = None) -> dict[str, Any]:
    """Runs ClaDec end to end (see the module docstring); returns and writes ``results.json``.

    Stages of the :class:`~jinterp.core.run.Run`: ``backbone``, per layer ``refae:<layer>`` and
    ``cladec:<layer>`` (resumable when ``ckpt_every`` > 0), then ``results``; each is reused only under the
    same settings (``restart``: discard those saved under other settings instead of refusing them).

    ``model``, ``variables``: a model passed in Python instead of ``cfg.model``/``cfg.arch`` (a converted
    ``(model, variables)`` pair, a Linen module and its variables, an NNX or PyTorch module); it runs through the
    same stage as ``--model`` and its digest is in every stage's fingerprint (:mod:`jinterp.models.given`).
    """
    cfg = with_model(cfg, model, variables)
    cfg.validate()
    with Run(workdir, cfg, method="cladec", restart=restart) as r:
        return _run(cfg, r, progress)


# Config fields that change no trained parameter (evaluation batch, grid size, logging).
_COSMETIC = ("grid_rows", "eval_batch_size", "log_every", "ckpt_every", "keep")


def _fields(cfg: ClaDecConfig, *drop: str) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k not in _COSMETIC + drop}


def _run(cfg: ClaDecConfig, r: Run, progress: bool) -> dict[str, Any]:
    from jinterp.report.figures import cladec as figs

    t0 = time.perf_counter()
    workdir = r.workdir
    timings: dict[str, float] = {}

    t = time.perf_counter()
    train_ds, test_ds = load_data(cfg)
    image_shape = tuple(int(d) for d in train_ds.images.shape[1:])
    act_shapes = check_layers(cfg, train_ds.num_classes, image_shape)
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model, variables, backbone_info = get_backbone(cfg, train_ds, test_ds, r, progress)
    variables = randomized_classifier(cfg, model, variables, backbone_info, image_shape)
    backbone_fp = r.upstream("backbone")
    # a user model's layers are known once loaded; its input scaling replaces the arch's
    minfo = backbone_info.pop("model_info", None)
    if minfo is not None:  # unknown names: the valid ones and the nearest match, before any shape is asked
        check_user_layers(cfg, minfo, {})
    act_shapes = dict(features.feature_shapes(model, variables, image_shape, cfg.layers))  # the loaded model's
    if minfo is not None:
        check_user_layers(cfg, minfo, act_shapes)
    scheme = backbone_info["normalization"] if cfg.model else cfg.arch
    timings["backbone_s"] = time.perf_counter() - t
    classify = evaluation.make_classify(model, scheme)
    x_test = test_ds.images

    root = jax.random.key(cfg.seed)
    grid_idx = _grid_indices(test_ds.labels, min(cfg.grid_rows, len(test_ds)))
    # results.json and figures describe exactly this run: those of other settings go before anything is computed
    results_stage = r.stage("results", fields=to_dict(cfg), inputs={"backbone": backbone_fp},
                            paths=[RESULTS_FILE, "figures"])
    figures: dict[str, str] = {}
    layers_out: dict[str, Any] = {}
    tradeoff: dict[str, Any] = {}
    for li, layer in enumerate(cfg.layers):
        tl = time.perf_counter()
        layer_dir = workdir / "layers" / layer.replace("/", "_")
        acts = features.extract(model, variables, np.concatenate([train_ds.images, x_test]), [layer],
                                batch_size=cfg.eval_batch_size, preprocess=scheme)[layer]
        acts_train, acts_test = acts[: len(train_ds)], acts[len(train_ds):]
        decoder = make_decoder(act_shapes[layer], image_shape, cfg.base_width, layer)
        lkey = jax.random.fold_in(root, li)

        rel = layer_dir.relative_to(workdir)
        ref_fn, ref_info = (None, None)
        if cfg.refae:  # the RefAE never sees α or the trained backbone's weights: an α sweep reuses it
            st = r.stage(f"refae:{layer}", fields=_fields(cfg, "alphas", "retrain_epochs", "retrain_lr",
                                                          "retrain_weight_decay", "retrain_batch_size",
                                                          "randomize_backbone"),
                         inputs={"data": data_fingerprint(data_spec(cfg)), "layer_index": li},
                         paths=[f"{rel}/refae", f"{rel}/refae.npz"], resumable=cfg.ckpt_every > 0,
                         code=("jinterp.methods.cladec.refae", "jinterp.methods.cladec.training"))
            ref_fn, ref_info = train_refae(cfg, model, image_shape, layer, decoder, train_ds.images,
                                           jax.random.fold_in(lkey, 1), layer_dir, progress, scheme=scheme)
            st.finish()
        st = r.stage(f"cladec:{layer}", fields=_fields(cfg, "retrain_epochs", "retrain_lr", "retrain_weight_decay",
                                                       "retrain_batch_size"),
                     inputs={"backbone": backbone_fp, "layer_index": li}, paths=[f"{rel}/cladec", f"{rel}/cladec.npz"],
                     resumable=cfg.ckpt_every > 0,
                     code=("jinterp.methods.cladec.decoder", "jinterp.methods.cladec.training"))
        stacked, sweep_info = train_sweep(cfg, model, variables, layer, decoder, train_ds, acts_train,
                                          jax.random.fold_in(lkey, 2), layer_dir, progress)
        st.finish()

        # ---- evaluation on the test split
        te = time.perf_counter()
        rec_test = evaluation.decode(decoder, stacked, acts_test, cfg.eval_batch_size)       # (K, Nt, H, W, C)
        sources = {f"cladec@{a:g}": rec_test[k] for k, a in enumerate(cfg.alphas)}
        ref_test = ref_fn(x_test) if ref_fn is not None else None
        if ref_test is not None:
            sources = {"refae": ref_test, **sources}
        names = list(sources)
        # One stack (the original test images first) through the frozen classifier: one compiled program.
        stack = np.stack([rec.as_unit(x_test), *(sources[k] for k in names)])
        acc = evaluation.classifier_accuracy(classify, variables, stack, test_ds.labels, cfg.eval_batch_size)
        per_source: dict[str, dict[str, Any]] = {
            "original": {"frozen_accuracy": float(acc["accuracy"][0]), "frozen_ce": float(acc["ce"][0])}}
        backbone_info["test_accuracy"] = per_source["original"]["frozen_accuracy"]
        for m, name in enumerate(names, start=1):
            per_source[name] = {**rec.summary(stack[m], x_test), "frozen_accuracy": float(acc["accuracy"][m]),
                                "frozen_ce": float(acc["ce"][m])}
        del stack

        if cfg.retrain_epochs > 0:
            rec_train = evaluation.decode(decoder, stacked, acts_train, cfg.eval_batch_size)
            train_sets = [train_ds.images] + ([rec.to_uint8(ref_fn(train_ds.images))] if ref_fn else []) + \
                [rec.to_uint8(r) for r in rec_train]
            del rec_train
            test_sets = [x_test] + [rec.to_uint8(sources[k]) for k in names]
            spec = evaluation.RetrainSpec(epochs=cfg.retrain_epochs, lr=cfg.retrain_lr,
                                          weight_decay=cfg.retrain_weight_decay, batch_size=cfg.retrain_batch_size,
                                          lr_decay=cfg.lr_decay, eval_batch_size=cfg.eval_batch_size, seed=cfg.seed)
            # a user model is retrained from its own fresh init (its architecture, as for a built-in arch)
            fresh = model if cfg.model else backbones.create(cfg.arch, model.num_classes, **_model_kwargs(cfg))
            rt = evaluation.retrain(fresh, scheme, np.stack(train_sets), train_ds.labels, np.stack(test_sets),
                                    x_test, test_ds.labels, spec, layer_dir / "retrain", progress=progress)
            for m, name in enumerate(["original", *names]):
                per_source[name]["retrain_acc_reconstructed"] = float(rt["acc_reconstructed"][m])
                per_source[name]["retrain_acc_original"] = float(rt["acc_original"][m])
            timings[f"retrain_{layer}_s"] = rt["train_time_s"]
            retrain_check = retrain_meaningful(per_source["original"]["retrain_acc_original"],
                                               per_source["original"]["frozen_accuracy"])
        else:
            retrain_check = None
        timings[f"eval_{layer}_s"] = time.perf_counter() - te

        # ---- figures
        fig = figs.reconstruction_grid(
            x_test[grid_idx], None if ref_test is None else ref_test[grid_idx],
            {a: rec_test[k][grid_idx] for k, a in enumerate(cfg.alphas)},
            workdir / "figures" / f"grid_{layer.replace('/', '_')}.png",
            title=f"{cfg.model or cfg.arch} layer {layer} {tuple(act_shapes[layer])}",
            row_labels=[test_ds.class_names[int(test_ds.labels[i])] for i in grid_idx])
        figures[f"grid_{layer}"] = str(fig)
        tradeoff[layer] = {
            "alphas": list(cfg.alphas), "mse": [per_source[f"cladec@{a:g}"]["mse"] for a in cfg.alphas],
            "accuracy": [per_source[f"cladec@{a:g}"]["frozen_accuracy"] for a in cfg.alphas],
            "refae_mse": per_source["refae"]["mse"] if "refae" in per_source else None,
            "refae_accuracy": per_source["refae"]["frozen_accuracy"] if "refae" in per_source else None,
            "original_accuracy": per_source["original"]["frozen_accuracy"]}
        layers_out[layer] = {"act_shape": list(act_shapes[layer]), "decoder": decoder.plan.describe(),
                             "decoder_params": decoder_param_count(decoder),
                             "sources": per_source, "refae_train": ref_info, "cladec_train": sweep_info,
                             "retrain_check": retrain_check}
        timings[f"layer_{layer}_s"] = time.perf_counter() - tl

    figures["tradeoff"] = str(figs.tradeoff_plot(tradeoff, workdir / "figures" / "tradeoff.png",
                                                 title=f"ClaDec on {cfg.arch}: fidelity vs. classifiability"))
    timings["total_s"] = time.perf_counter() - t0
    results = {
        "method": "cladec", "arch": cfg.model or cfg.arch, "data": data_spec(cfg), "image_shape": list(image_shape),
        "train_size": len(train_ds), "test_size": len(test_ds), "layers": layers_out, "backbone": backbone_info,
        "alphas": list(cfg.alphas), "faithful": cfg.faithful, "randomize_backbone": cfg.randomize_backbone,
        "retrain_protocol": RETRAIN_NOTE if cfg.retrain_epochs > 0 else None,
        "figures": figures, "wall_times_s": timings, "config": to_dict(cfg),
        "device": jax.default_backend(),
    }
    r.write_json(RESULTS_FILE, results)
    results_stage.finish()
    return results
