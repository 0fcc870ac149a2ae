"""Interpretable bases: UIBE (unsupervised; Doumanoglou et al., IEEE TAI 2023) and IBD (the supervised baseline),
with the planted-concept check and the end-to-end program (spec ``uibe_and_metrics.md``).

    from jinterp.methods.basis import BasisConfig, run
    results = run(BasisConfig.tiny(), "runs/basis")

Modules: ``config`` (BasisConfig), ``uibe`` (the rotation with sparse thresholded detectors), ``ibd`` (one linear
classifier per concept), ``planted`` (synthetic features with known concept directions), ``program``, ``cli``.
"""

from jinterp.core.results import BasisResult
from jinterp.methods.basis import ibd, planted, uibe
from jinterp.methods.basis.config import METHODS, BasisConfig
from jinterp.methods.basis.ibd import IBDConfig, IBDResult
from jinterp.methods.basis.planted import PlantedConfig
from jinterp.methods.basis.uibe import UIBEConfig, UIBEResult


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None,
        variables=None) -> BasisResult:
    """The whole method on ``cfg`` in ``workdir`` (:func:`jinterp.methods.basis.program.run`, imported lazily);
    returns the typed :class:`~jinterp.core.results.BasisResult`
    of the ``results.json`` it writes (``.to_json()`` is that dict; ``program.run`` returns the dict itself,
    for the CLI and the demo)."""
    from jinterp.core import results
    from jinterp.methods.basis.program import run as _run

    return results.finished(BasisResult, _run(cfg, workdir, progress=progress, restart=restart,
                                                    model=model, variables=variables), workdir)


def load_result(workdir) -> BasisResult:
    """A finished run's results (``<workdir>/results.json`` and its array files) as a :class:`BasisResult`."""
    return BasisResult.load(workdir)


__all__ = ["BasisConfig", "BasisResult", "IBDConfig", "IBDResult", "METHODS", "PlantedConfig", "UIBEConfig",
           "UIBEResult", "ibd", "load_result", "planted", "run", "uibe"]
