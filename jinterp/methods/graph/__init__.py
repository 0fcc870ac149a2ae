"""Explanatory graph (Zhang et al., AAAI 2018): part-pattern nodes per filter, learned top-down by EM, with
co-activation/spatial edges to parent nodes; evaluated by location instability and few-shot part localization.

Modules: ``config`` (GraphConfig), ``geometry`` (LayerGeom, MATLAB rounding), ``normalization`` (negative-image
std), ``init`` (node init), ``estep`` / ``mstep`` (EM), ``parents`` (edges + parent prior), ``learn`` (top-down),
``program`` (end to end on synthparts), ``cli`` (``jinterp graph``).

    from jinterp.methods.graph import GraphConfig, run
    results = run(GraphConfig.tiny(), "runs/graph")
"""

from jinterp.core.results import GraphResult
from jinterp.methods.graph.config import GraphConfig
from jinterp.methods.graph.geometry import LayerGeom, layer_geom
from jinterp.methods.graph.learn import GraphLayer, learn_graph, learn_layer


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None,
        variables=None) -> GraphResult:
    """The whole method on ``cfg`` in ``workdir`` (:func:`jinterp.methods.graph.program.run`, imported lazily);
    returns the typed :class:`~jinterp.core.results.GraphResult`
    of the ``results.json`` it writes (``.to_json()`` is that dict; ``program.run`` returns the dict itself,
    for the CLI and the demo)."""
    from jinterp.core import results
    from jinterp.methods.graph.program import run as _run

    return results.finished(GraphResult, _run(cfg, workdir, progress=progress, restart=restart,
                                                    model=model, variables=variables), workdir)


def load_result(workdir) -> GraphResult:
    """A finished run's results (``<workdir>/results.json`` and its array files) as a :class:`GraphResult`."""
    return GraphResult.load(workdir)


__all__ = ["GraphConfig", "GraphLayer", "GraphResult", "LayerGeom", "layer_geom", "learn_graph", "learn_layer",
           "load_result", "run"]
