"""Class-specific gates (Liang et al., ECCV 2020; spec ``cladec_and_csg.md`` part B).

``config`` (CSGConfig), ``gate`` (gate site per backbone, gated forward, renormalization, penalty),
``train`` (the released alternating algorithm), ``localization`` (GradMap, CAM, ActivMap vs object masks),
``adversarial`` (FGSM/PGD and a gate-based detector: a reconstructed protocol), ``program`` (``run``), ``cli``.

    from jinterp.methods.csg import CSGConfig, run
    results = run(CSGConfig.tiny(), "runs/csg")
"""

from jinterp.core.results import CSGResult
from jinterp.methods.csg.config import CSGConfig, PathOptim


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None,
        variables=None) -> CSGResult:
    """The whole method on ``cfg`` in ``workdir`` (:func:`jinterp.methods.csg.program.run`, imported lazily);
    returns the typed :class:`~jinterp.core.results.CSGResult`
    of the ``results.json`` it writes (``.to_json()`` is that dict; ``program.run`` returns the dict itself,
    for the CLI and the demo)."""
    from jinterp.core import results
    from jinterp.methods.csg.program import run as _run

    return results.finished(CSGResult, _run(cfg, workdir, progress=progress, restart=restart,
                                                    model=model, variables=variables), workdir)


def load_result(workdir) -> CSGResult:
    """A finished run's results (``<workdir>/results.json`` and its array files) as a :class:`CSGResult`."""
    return CSGResult.load(workdir)


__all__ = ["CSGConfig", "CSGResult", "PathOptim", "load_result", "run"]
