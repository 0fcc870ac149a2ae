"""Explanatory-graph behaviour: the parent-conditioned prior must reach the E-step (issue #20: a prior computed but
never used left every test green)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.methods.graph import estep as es
from jinterp.methods.graph.config import GraphConfig
from jinterp.methods.graph.geometry import LayerGeom
from jinterp.methods.graph.learn import GraphLayer, learn_layer


def _geom(h, c, k, stride):
    return LayerGeom(h=h, w=h, c=c, k=k, s=6, r_max=int(round(0.6 * h / 2)), max_range=0.6, deform_ratio=3.0,
                     map_sigma=0.15 * h / 2, init_sigma=0.15 * h, sigma_min=0.1, sigma_max=0.4 * h, tau=0.1,
                     faithful=False, stride=stride, center=(stride + 1) / 2)


def test_estep_follows_the_prior_shift_when_the_evidence_is_ambiguous():
    # Two equal bumps either side of the node: with δ pointing at one of them the MAP position must go there.
    g = _geom(12, 1, 1, 4.0)
    maps = np.zeros((2, 12, 12, 1), np.float32)
    maps[:, 6, 3, 0] = maps[:, 6, 9, 0] = 5.0
    coord = jnp.asarray([[[6.0, 6.0]]])
    sigma = jnp.asarray([[2.5]])
    prior = lambda d: es.Prior(jnp.asarray(d, jnp.float32).reshape(2, 1, 1, 2), jnp.full((1, 1), 1.0),  # noqa: E731
                               jnp.zeros((2, 1, 1)))
    out = es.estep(jnp.asarray(maps), coord, sigma, prior([[0.0, -3.0], [0.0, 3.0]]), geom=g, chunk=2)
    pos = np.asarray(out.pos)[:, 0, 0]
    assert pos[0, 1] < 5.0 and pos[1, 1] > 7.0, pos
    # λ weights images: a node whose parents make one image unlikely gets less score there.
    lam = es.Prior(jnp.zeros((2, 1, 1, 2)), jnp.full((1, 1), 1.0), jnp.asarray([0.0, -5.0]).reshape(2, 1, 1))
    t = np.asarray(es.estep(jnp.asarray(maps), coord, sigma, lam, geom=g, chunk=2).T)[:, 0, 0]
    assert t[1] < 0.1 * t[0]


def _upper(n, rng, shift):
    """A learned upper layer: 2 filters x 2 nodes at random positions per image, moved by ``shift`` cells."""
    g = _geom(6, 2, 2, 8.0)
    pos = rng.uniform(1.5, 4.5, (n, 2, 2, 2)) + shift
    return GraphLayer(name="up", geom=g, coord=pos.mean(0), sigma=np.full((2, 2), 0.8, np.float32), parents=None,
                      prob_record=np.ones((n, 2, 2), np.float32), pos_record=pos.astype(np.float32),
                      phi=np.ones((n, 2, 2), np.float32), history=[])


def test_learned_child_positions_depend_on_where_the_parents_are():
    n = 16
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(0, 0.3, (n, 12, 12, 2)), 0).astype(np.float32)
    maps[np.arange(n), rng.integers(2, 10, n), rng.integers(2, 10, n), 0] += 3.0  # a part per image, filter 0
    maps[np.arange(n), rng.integers(2, 10, n), rng.integers(2, 10, n), 1] += 3.0
    cfg = dataclasses.replace(GraphConfig(), iterations=3, min_var_rate=0.0, edge_cut_rate=0.0, memory_mb=64)
    child = _geom(12, 2, 3, 4.0)
    up_a = _upper(n, np.random.default_rng(1), 0.0)
    # The same parents, but in every image displaced by a different large amount ("the parent is far").
    up_b = dataclasses.replace(up_a, pos_record=up_a.pos_record + np.random.default_rng(2).uniform(
        -1.5, 1.5, (n, 1, 1, 2)).astype(np.float32))
    key = jax.random.PRNGKey(0)
    a = learn_layer(maps, child, cfg, key, upper=up_a, top_n=2, top_m=4)
    b = learn_layer(maps, child, cfg, key, upper=up_b, top_n=2, top_m=4)
    top = learn_layer(maps, child, cfg, key, upper=None)
    assert a.parents is not None and a.parents.shape == (2, 3, 2)
    assert np.abs(a.pos_record - b.pos_record).max() > 0.5, "parents moved, the posterior did not"
    assert np.abs(a.prob_record - top.prob_record).max() > 1e-3, "a prior that changes nothing"
