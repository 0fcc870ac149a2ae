"""Explanatory graph (Zhang et al., AAAI 2018): part-pattern nodes per filter, learned top-down by EM, with
co-activation/spatial edges to parent nodes; evaluated by location instability and few-shot part localization.

Modules: ``config`` (GraphConfig), ``geometry`` (LayerGeom, MATLAB rounding), ``normalization`` (negative-image
std), ``init`` (node init), ``estep`` / ``mstep`` (EM), ``parents`` (edges + parent prior), ``learn`` (top-down),
``program`` (end to end on synthparts), ``cli`` (``jinterp graph``).

    from jinterp.methods.graph import GraphConfig, run
    results = run(GraphConfig.tiny(), "runs/graph")
"""

from jinterp.methods.graph.config import GraphConfig
from jinterp.methods.graph.geometry import LayerGeom, layer_geom
from jinterp.methods.graph.learn import GraphLayer, learn_graph, learn_layer


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None, variables=None) -> dict:
    """:func:`jinterp.methods.graph.program.run` (imported lazily): the whole method on ``cfg`` in ``workdir``;
    returns the results dict it also writes to ``<workdir>/results.json``."""
    from jinterp.methods.graph.program import run as _run

    return _run(cfg, workdir, progress=progress, restart=restart, model=model, variables=variables)


__all__ = ["GraphConfig", "GraphLayer", "LayerGeom", "layer_geom", "learn_graph", "learn_layer", "run"]
