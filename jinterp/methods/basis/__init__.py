"""Interpretable bases: UIBE (unsupervised; Doumanoglou et al., IEEE TAI 2023) and IBD (the supervised baseline),
with the planted-concept check and the end-to-end program (spec ``uibe_and_metrics.md``).

    from jinterp.methods.basis import BasisConfig, run
    results = run(BasisConfig.tiny(), "runs/basis")

Modules: ``config`` (BasisConfig), ``uibe`` (the rotation with sparse thresholded detectors), ``ibd`` (one linear
classifier per concept), ``planted`` (synthetic features with known concept directions), ``program``, ``cli``.
"""

from jinterp.methods.basis import ibd, planted, uibe
from jinterp.methods.basis.config import METHODS, BasisConfig
from jinterp.methods.basis.ibd import IBDConfig, IBDResult
from jinterp.methods.basis.planted import PlantedConfig
from jinterp.methods.basis.uibe import UIBEConfig, UIBEResult


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None, variables=None) -> dict:
    """:func:`jinterp.methods.basis.program.run` (imported lazily): the whole method on ``cfg`` in ``workdir``;
    returns the results dict it also writes to ``<workdir>/results.json``."""
    from jinterp.methods.basis.program import run as _run

    return _run(cfg, workdir, progress=progress, restart=restart, model=model, variables=variables)


__all__ = ["METHODS", "BasisConfig", "IBDConfig", "IBDResult", "PlantedConfig", "UIBEConfig", "UIBEResult", "ibd",
           "planted", "run", "uibe"]
