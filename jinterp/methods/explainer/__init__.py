"""Explainer network (auto-encoder that disentangles a performer's conv layer into object-part features,
learned by distillation) and the interpretable-CNN filter loss it uses.

Spec ``explainer_and_graph.md`` parts B (ICNN) and C (explainer). Modules: :mod:`.icnn` (templates, part
location, mask, exact MI filter loss, the release's surrogate gradient, learned β), :mod:`.model` (the
explainer, its loss and pure train step, feeding reconstructions back into the performer), :mod:`.config`,
:mod:`.program` (``run(cfg, workdir)``), :mod:`.cli` (``jinterp explainer``).

    from jinterp.methods.explainer import ExplainerConfig, run
    results = run(ExplainerConfig.tiny(), "runs/explainer")
"""

from jinterp.core.results import ExplainerResult
from jinterp.methods.explainer.config import ExplainerConfig


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None,
        variables=None) -> ExplainerResult:
    """The whole method on ``cfg`` in ``workdir`` (:func:`jinterp.methods.explainer.program.run`, imported lazily);
    returns the typed :class:`~jinterp.core.results.ExplainerResult`
    of the ``results.json`` it writes (``.to_json()`` is that dict; ``program.run`` returns the dict itself,
    for the CLI and the demo)."""
    from jinterp.core import results
    from jinterp.methods.explainer.program import run as _run

    return results.finished(ExplainerResult, _run(cfg, workdir, progress=progress, restart=restart,
                                                    model=model, variables=variables), workdir)


def load_result(workdir) -> ExplainerResult:
    """A finished run's results (``<workdir>/results.json`` and its array files) as a :class:`ExplainerResult`."""
    return ExplainerResult.load(workdir)


__all__ = ["ExplainerConfig", "ExplainerResult", "load_result", "run"]
