"""Supervised training of a classification backbone: the program behind ``jinterp train-backbone``.

    from jinterp.core.config import TrainBackboneConfig
    from jinterp.core.train_backbone import train_backbone
    final = train_backbone(TrainBackboneConfig.tiny(), "runs/x")    # {"test_accuracy": ..., ...}
    res = run(TrainBackboneConfig.tiny(), "runs/x")   # the same as a typed TrainBackboneResult (+ params arrays)
    res = load_result("runs/x")                        # read back from final_metrics.json and params.npz

The work directory receives ``config.json``, ``metrics.jsonl``, ``checkpoints/<step>/`` (resume: rerun the same
command), and at the end ``params.npz`` (``jinterp.backbones.torch_import.save_variables`` format, loadable
with ``load_variables`` / ``--weights``) and ``final_metrics.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import backbones, data
from jinterp.core import loop, train
from jinterp.core import sharding as shd
from jinterp.core.checkpoint import RESUMABLE_CHANGES, Checkpointer
from jinterp.core.config import TrainBackboneConfig, to_dict
from jinterp.core.results import TrainBackboneResult, finished
from jinterp.core.run import Run, data_fingerprint, file_fingerprint, load_backbone_weights, write_file
from jinterp.errors import ConfigError, DataError, StorageError, WeightsError

PARAMS_FILE = "params.npz"
FINAL_METRICS_FILE = "final_metrics.json"


def data_spec(cfg: TrainBackboneConfig) -> str:
    """The ``jinterp.data.load`` spec: for a bare ``synthparts``, the config's size and split sizes."""
    return data.with_synthparts_defaults(cfg.data, size=cfg.image_size, n_train=cfg.train_size or None,
                                         n_test=cfg.test_size or None)


def normalization_stats(cfg: TrainBackboneConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels for ``cfg.normalization`` ("arch" = the backbone's own scheme)."""
    name = backbones.NORMALIZATION[cfg.arch] if cfg.normalization == "arch" else cfg.normalization
    if name in data.NORMALIZATIONS:
        return data.NORMALIZATIONS[name]
    raise ConfigError(f"unknown normalization {cfg.normalization!r}; use 'arch' or one of "
                      f"{sorted(data.NORMALIZATIONS)}")


def _load_weights(path: str, arch: str, init_vars: dict) -> dict:
    variables, _ = load_backbone_weights(path, arch)
    want = jax.tree_util.tree_flatten_with_path(init_vars)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    bad = [f"{train.path_name(p)}: file {None if p not in have else tuple(have[p].shape)} vs model {x.shape}"
           for p, x in want if p not in have or tuple(have[p].shape) != tuple(x.shape)]
    if bad:
        raise WeightsError(f"--weights {path} does not fit {arch} with this data ({'; '.join(bad[:5])}); "
                           "check --arch and the number of classes")
    return jax.tree_util.tree_unflatten(jax.tree.structure(init_vars),
                                        [jnp.asarray(have[p], x.dtype) for p, x in want])


def train_backbone(cfg: TrainBackboneConfig, workdir: str | Path, *, progress: bool = True,
                   mesh: jax.sharding.Mesh | None = None, restart: bool = False) -> dict[str, Any]:
    """Trains (or resumes training of) ``cfg.arch`` on ``cfg.data``; returns the final metrics dict.

    One resumable stage ``train`` of a :class:`jinterp.core.run.Run`: a rerun with the same settings resumes
    from the last checkpoint; a finished run under other settings is discarded and retrained; an unfinished one
    is refused (a new ``--workdir``, or ``restart=True`` / ``--restart`` to discard it).
    """
    cfg.validate()
    backbones.spec(cfg.arch)  # an unknown arch or normalization fails before anything is written
    normalization_stats(cfg)
    with Run(workdir, cfg, method="train-backbone", restart=restart) as r:
        return _train(cfg, r, progress=progress, mesh=mesh)


def run(cfg: TrainBackboneConfig, workdir: str | Path, *, progress: bool = True,
        mesh: jax.sharding.Mesh | None = None, restart: bool = False) -> TrainBackboneResult:
    """:func:`train_backbone` returning the typed :class:`~jinterp.core.results.TrainBackboneResult` (``.to_json()``
    is ``final_metrics.json``; ``arrays["params"]`` the trained variables), like ``jinterp.methods.<m>.run``."""
    return finished(TrainBackboneResult, train_backbone(cfg, workdir, progress=progress, mesh=mesh, restart=restart),
                    workdir)


def load_result(workdir: str | Path) -> TrainBackboneResult:
    """A finished training's ``final_metrics.json`` and ``params.npz`` as a :class:`TrainBackboneResult`."""
    return TrainBackboneResult.load(workdir)


def stage_fields(cfg: TrainBackboneConfig) -> dict[str, Any]:
    """The config fields the trained parameters depend on (not logging/checkpoint cadence)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_CHANGES}


def _train(cfg: TrainBackboneConfig, r: Run, *, progress: bool, mesh: jax.sharding.Mesh | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    workdir = r.workdir

    # ---- data
    spec = data_spec(cfg)
    train_ds, test_ds = data.load(spec, "train"), data.load(spec, "test")
    if len(train_ds) < cfg.batch_size:
        raise DataError(f"{spec}: {len(train_ds)} training examples < batch_size {cfg.batch_size}; "
                        "use a smaller --set batch_size or more data")
    num_classes = cfg.num_classes or train_ds.num_classes
    top = int(max(train_ds.labels.max(), test_ds.labels.max()))
    if top >= num_classes:
        raise ConfigError(f"labels go up to {top} but num_classes is {num_classes}; set num_classes >= {top + 1}")
    image_shape = tuple(int(d) for d in train_ds.images.shape[1:])
    steps_per_epoch = len(train_ds) // cfg.batch_size
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # ---- model, optimizer, state (replicated over the mesh)
    mesh = mesh or shd.make_mesh()
    shd.check_batch_size(cfg.batch_size, mesh)
    model = backbones.create(cfg.arch, num_classes,
                             **({"widths": cfg.widths} if cfg.widths and cfg.arch == "convnet" else {}))
    init_key, loop_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    variables = backbones.init(model, init_key, image_shape)
    if cfg.weights:
        variables = _load_weights(cfg.weights, cfg.arch, variables)
    tx, schedule = train.make_optimizer(cfg.optim, total, variables["params"])
    state = jax.jit(lambda v: train.create_train_state(v, tx, loop_key),
                    out_shardings=shd.replicated(mesh))(variables)
    del variables

    inputs = {"data": data_fingerprint(spec)}
    if cfg.weights:
        inputs["weights"] = file_fingerprint(cfg.weights)
    stage = r.stage("train", fields=stage_fields(cfg), inputs=inputs, resumable=True,
                    paths=["checkpoints", loop.METRICS_FILE, PARAMS_FILE, FINAL_METRICS_FILE],
                    code=("jinterp.core.train_backbone", "jinterp.core.train", "jinterp.core.loop"))
    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.keep, config=to_dict(cfg))
    state, start, pos = loop.restore_or_init(ckpt, state, workdir)  # raises before anything is written

    # ---- steps
    mean, std = normalization_stats(cfg)
    dtype = jnp.bfloat16 if cfg.bf16 else None
    loss_fn = train.make_classifier_loss(model, mean=mean, std=std, augment=cfg.augment, crop_pad=cfg.crop_pad,
                                         label_smoothing=cfg.label_smoothing,
                                         compute_dtype=dtype or jnp.float32)
    train_step = train.make_train_step(loss_fn, tx, mesh=mesh, schedule=schedule, compute_dtype=dtype)
    eval_step = train.make_eval_step(
        train.make_classifier_eval(model, mean=mean, std=std, compute_dtype=dtype or jnp.float32), mesh=mesh)
    last_eval: dict[int, dict] = {}

    def eval_fn(s):
        it = data.BatchIterator(test_ds, cfg.batch_size, shuffle=False, num_epochs=1, mesh=mesh)
        out = train.evaluate(eval_step, s, it, mesh=mesh)
        last_eval.clear()
        last_eval[int(jax.device_get(s.step))] = out
        return out

    train_iter = data.BatchIterator(train_ds, cfg.batch_size, seed=cfg.seed, drop_remainder=True, mesh=mesh,
                                    position=pos)
    try:
        with ckpt:  # closed on the way out; a close failing after an error never hides that error
            state = loop.train_loop(
                state, train_step=train_step, train_iter=train_iter, num_steps=total, workdir=workdir, mesh=mesh,
                checkpointer=ckpt, eval_fn=eval_fn, log_every=cfg.log_every, eval_every=cfg.eval_every,
                ckpt_every=cfg.ckpt_every, progress=progress, desc=f"train {cfg.arch}")
    finally:
        train_iter.close()

    # ---- outputs for later methods (--weights) and reports
    final_step = int(jax.device_get(state.step))
    result = last_eval.get(final_step) or eval_fn(state)
    from jinterp.backbones import torch_import

    host = jax.device_get(state.variables)
    meta = {"arch": cfg.arch, "num_classes": num_classes, "image_shape": list(image_shape),
            "normalization": backbones.NORMALIZATION[cfg.arch] if cfg.normalization == "arch"
            else cfg.normalization, "data": spec, "step": final_step, "test_accuracy": result["accuracy"],
            "source": "jinterp train-backbone", "config": to_dict(cfg)}
    # process 0 writes (through a temp name and a rename); the others wait for it
    _writing(workdir / PARAMS_FILE, lambda: write_file(
        workdir / PARAMS_FILE, lambda tmp: torch_import.save_variables(tmp, jax.tree.map(np.asarray, host), meta)))
    final = {
        "arch": cfg.arch, "data": spec, "step": final_step, "steps": total, "resumed_from": start,
        "test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_count": result["count"],
        "num_classes": num_classes, "image_shape": list(image_shape), "devices": int(mesh.devices.size),
        "wall_time_s": time.perf_counter() - t0, "params": str(workdir / PARAMS_FILE),
    }
    _writing(workdir / FINAL_METRICS_FILE, lambda: write_file(
        workdir / FINAL_METRICS_FILE, lambda tmp: tmp.write_text(json.dumps(final, indent=2) + "\n")))
    stage.finish()
    return final


def _writing(path: Path, write):
    """Runs ``write()``; a file-system failure (disk full, read-only work directory) becomes a StorageError."""
    try:
        return write()
    except OSError as e:
        if isinstance(e, StorageError):
            raise
        raise StorageError(f"cannot write {path} ({e.strerror or e}); free disk space or make the work directory "
                           "writable, then rerun the same command: training resumes from the last complete "
                           "checkpoint, which is intact.") from e
