"""jinterp.core: run infrastructure shared by every trainer and method.

* ``config``: frozen dataclass configs with ``paper()``/``tiny()`` presets, ``apply_overrides(cfg,
  ["optim.lr=0.1"])`` (typed; ConfigError lists the valid keys), ``to_dict``/``from_dict``/``diff``;
  ``OptimConfig`` and ``TrainBackboneConfig``.
* ``train``: ``TrainState`` (step, params, model_state, opt_state, rng), ``make_optimizer`` (SGD/Adam/AdamW,
  warmup + constant/cosine/step schedules, clipping, regex freezing), ``make_train_step``/``make_eval_step``
  (jitted, donated state, per-step key ``fold_in(rng, step)``, optional bf16 compute), classification losses.
* ``sharding``: a Mesh with a ``data`` axis; batches ``P("data")``, params replicated.
* ``checkpoint``: ``Checkpointer`` (Orbax CheckpointManager: state + JSON meta with config and data position;
  CheckpointError on corrupt/incompatible checkpoints).
* ``loop``: ``train_loop`` (tqdm, ``metrics.jsonl``, eval, checkpoints, NaN guard) and ``restore_or_init``.
* ``tensorboard``: native TensorBoard event files mirroring ``metrics.jsonl`` (``--tensorboard``, ``logging()``).
* ``results``: the typed results (one frozen pytree dataclass per program) beside ``results.json``.
* ``train_backbone``: the ``jinterp train-backbone`` program (``train_backbone`` -> dict, ``run`` -> typed result).
* ``features``: jitted activation extraction and caching.

Submodules are imported on use (``from jinterp.core import train``) to keep ``import jinterp`` light.
"""
