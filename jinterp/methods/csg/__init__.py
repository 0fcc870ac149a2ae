"""Class-specific gates (Liang et al., ECCV 2020; spec ``cladec_and_csg.md`` part B).

``config`` (CSGConfig), ``gate`` (gate site per backbone, gated forward, renormalization, penalty),
``train`` (the released alternating algorithm), ``localization`` (GradMap, CAM, ActivMap vs object masks),
``adversarial`` (FGSM/PGD and a gate-based detector: a reconstructed protocol), ``program`` (``run``), ``cli``.

    from jinterp.methods.csg import CSGConfig, run
    results = run(CSGConfig.tiny(), "runs/csg")
"""

from jinterp.methods.csg.config import CSGConfig, PathOptim


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None, variables=None) -> dict:
    """:func:`jinterp.methods.csg.program.run` (imported lazily): the whole method on ``cfg`` in ``workdir``;
    returns the results dict it also writes to ``<workdir>/results.json``."""
    from jinterp.methods.csg.program import run as _run

    return _run(cfg, workdir, progress=progress, restart=restart, model=model, variables=variables)


__all__ = ["CSGConfig", "PathOptim", "run"]
