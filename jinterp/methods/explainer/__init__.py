"""Explainer network (auto-encoder that disentangles a performer's conv layer into object-part features,
learned by distillation) and the interpretable-CNN filter loss it uses.

Spec ``explainer_and_graph.md`` parts B (ICNN) and C (explainer). Modules: :mod:`.icnn` (templates, part
location, mask, exact MI filter loss, the release's surrogate gradient, learned β), :mod:`.model` (the
explainer, its loss and pure train step, feeding reconstructions back into the performer), :mod:`.config`,
:mod:`.program` (``run(cfg, workdir)``), :mod:`.cli` (``jinterp explainer``).

    from jinterp.methods.explainer import ExplainerConfig, run
    results = run(ExplainerConfig.tiny(), "runs/explainer")
"""

from jinterp.methods.explainer.config import ExplainerConfig


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None, variables=None) -> dict:
    """:func:`jinterp.methods.explainer.program.run` (imported lazily): the whole method on ``cfg`` in ``workdir``;
    returns the results dict it also writes to ``<workdir>/results.json``."""
    from jinterp.methods.explainer.program import run as _run

    return _run(cfg, workdir, progress=progress, restart=restart, model=model, variables=variables)


__all__ = ["ExplainerConfig", "run"]
