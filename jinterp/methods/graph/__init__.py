"""Explanatory graph (Zhang et al., AAAI 2018): part-pattern nodes per filter, learned top-down by EM, with
co-activation/spatial edges to parent nodes; evaluated by location instability and few-shot part localization.

Modules: ``config`` (GraphConfig), ``geometry`` (LayerGeom, MATLAB rounding), ``normalization`` (negative-image
std), ``init`` (node init), ``estep`` / ``mstep`` (EM), ``parents`` (edges + parent prior), ``learn`` (top-down),
``program`` (end to end on synthparts), ``cli`` (``jinterp graph``).
"""

from jinterp.methods.graph.config import GraphConfig
from jinterp.methods.graph.geometry import LayerGeom, layer_geom
from jinterp.methods.graph.learn import GraphLayer, learn_graph, learn_layer

__all__ = ["GraphConfig", "GraphLayer", "LayerGeom", "layer_geom", "learn_graph", "learn_layer"]
