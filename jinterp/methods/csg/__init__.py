"""Class-specific gates (Liang et al., ECCV 2020; spec ``cladec_and_csg.md`` part B).

``config`` (CSGConfig), ``gate`` (gate site per backbone, gated forward, renormalization, penalty),
``train`` (the released alternating algorithm), ``localization`` (GradMap, CAM, ActivMap vs object masks),
``adversarial`` (FGSM/PGD and a gate-based detector: a reconstructed protocol), ``program`` (``run``), ``cli``.
"""

from jinterp.methods.csg.config import CSGConfig, PathOptim

__all__ = ["CSGConfig", "PathOptim"]
