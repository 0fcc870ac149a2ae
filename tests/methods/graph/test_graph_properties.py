"""Spec part E properties of the explanatory graph: evidence kernel, competition, M-step step, parent prior, init."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.methods.graph import estep as es
from jinterp.methods.graph import parents as pa
from jinterp.methods.graph.geometry import LayerGeom, candidate_offsets, mround, nodes_per_filter
from jinterp.methods.graph.init import init_nodes
from jinterp.methods.graph.mstep import mstep
from jinterp.methods.graph.normalization import negative_std, normalize


def geom1(k=1, faithful=False, tau=0.0, h=12):
    return LayerGeom(h=h, w=h, c=1, k=k, s=6, r_max=4, max_range=8 / h, deform_ratio=3.0, map_sigma=0.7,
                     init_sigma=1.5, sigma_min=0.1, sigma_max=5.0, tau=tau, faithful=faithful, stride=8.0, center=4.5)


def run(geom, maps, coord, sigma, s=1e3, n=None):
    n = maps.shape[0]
    prior = es.Prior(jnp.zeros((n, geom.c, geom.k, 2)), jnp.full((geom.c, geom.k), s, jnp.float32),
                     jnp.zeros((n, geom.c, geom.k)))
    return es.estep(jnp.asarray(maps, jnp.float32), jnp.asarray(coord, jnp.float32),
                    jnp.asarray(sigma, jnp.float32), prior, geom=geom, chunk=n)


def test_mround_is_half_away_from_zero():
    np.testing.assert_array_equal(np.asarray(mround(jnp.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49]))),
                                  [1, 2, 3, -1, -2, 0])


def test_candidate_offsets_are_bin_centres():
    g = geom1()
    np.testing.assert_allclose(np.asarray(candidate_offsets(g, jnp.array(4))), [-10 / 3, -2, -2 / 3, 2 / 3, 2, 10 / 3],
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(candidate_offsets(g, jnp.array(2))), [-5 / 3, -1, -1 / 3, 1 / 3, 1, 5 / 3],
                               rtol=1e-6)


def test_evidence_peaks_at_the_candidate_nearest_a_hot_cell():
    g = geom1()
    maps = np.zeros((1, 12, 12, 1))
    maps[0, 7, 4, 0] = 5.0  # hot cell (h=7, w=4); node at (6, 6), R = 4 -> candidates 6 + {±0.67, ±2, ±3.33}
    out = run(g, maps, [[[6.0, 6.0]]], [[2.0]])
    np.testing.assert_allclose(np.asarray(out.pos)[0, 0, 0], [6 + 2 / 3, 6 - 2.0], atol=1e-5)


def test_evidence_floor_beyond_three_sigma_and_zero_outside_the_map():
    g = dataclasses.replace(geom1(), map_sigma=0.2)
    maps = np.zeros((1, 12, 12, 1))
    maps[0, 2, 2, 0] = 1.0  # inside the window (|q| <= 4) of a node at (6, 6) but > 3σ_m from every candidate
    out = run(g, maps, [[[6.0, 6.0]]], [[2.0]])
    floor = math.exp(-4.5) / (math.sqrt(2 * math.pi) * 0.2)
    gsum = (np.exp(-np.asarray(candidate_offsets(g, jnp.array(4))) ** 2 / 2e6) / (math.sqrt(2 * math.pi) * 1e3)).sum()
    t = float(out.T[0, 0, 0]) * math.exp(float(out.log_scale))
    assert t == pytest.approx(floor * gsum ** 2, rel=1e-4)
    # a node whose window lies outside the map sees nothing
    out = run(g, maps, [[[-6.0, 20.0]]], [[2.0]])
    assert float(out.T[0, 0, 0]) == 0.0


def test_single_node_without_background_has_responsibility_one():
    g = geom1(tau=0.0)
    rng = np.random.default_rng(0)
    maps = rng.random((2, 12, 12, 1))
    out = run(g, maps, [[[5.3, 6.2]]], [[1.2]], s=1.5)
    # rho = 1 everywhere inside the box -> A = sum_o e, and T = sum_o g e; check A against e from T's definition:
    # with g nearly constant (large s, but g above the 1e-7 floor of the denominator) A = T / g.
    out2 = run(g, maps, [[[5.3, 6.2]]], [[1.2]], s=100.0)
    g_const = (1 / (math.sqrt(2 * math.pi) * 100.0)) ** 2
    np.testing.assert_allclose(np.asarray(out2.A), np.asarray(out2.T_sum) * math.exp(float(out2.log_scale)) / g_const,
                               rtol=1e-3)
    assert np.all(np.asarray(out.A) > 0)


def test_two_coincident_nodes_share_responsibility():
    g1, g2 = geom1(k=1), geom1(k=2)
    rng = np.random.default_rng(1)
    maps = rng.random((2, 12, 12, 1))
    one = run(g1, maps, [[[5.3, 6.2]]], [[1.2]], s=1.5)
    two = run(g2, maps, [[[5.3, 6.2], [5.3, 6.2]]], [[1.2, 1.2]], s=1.5)
    np.testing.assert_allclose(np.asarray(two.A)[0], np.asarray(one.A)[0, 0] / 2, rtol=1e-5)


def test_mstep_top_layer_is_a_damped_mean_shift():
    # One node, one isolated peak, tau = 0: rho = 1, so mu moves by (e-weighted mean candidate offset) / sqrt(t).
    g = geom1()
    maps = np.zeros((1, 12, 12, 1))
    maps[0, 8, 5, 0] = 3.0
    coord, sigma, s = jnp.array([[[6.0, 6.0]]]), jnp.array([[2.0]]), 1.5
    out = run(g, maps, coord, sigma, s=s)
    t = 4
    new, _, rec = mstep(coord, sigma, out, jnp.full((1, 1), s), t, geom=g)
    offs = np.asarray(candidate_offsets(g, jnp.array(4)), np.float64)
    # evidence of each candidate (h, w) from the single hot cell at offset (2, -1) from the center
    d2 = (offs[:, None] - 2) ** 2 + (offs[None, :] + 1) ** 2
    e = np.where(d2 < 9 * 0.49, np.exp(-d2 / 0.98), math.exp(-4.5))
    mean = np.array([(e * offs[:, None]).sum(), (e * offs[None, :]).sum()]) / e.sum()
    np.testing.assert_allclose(np.asarray(new - coord)[0, 0], mean / math.sqrt(t), rtol=1e-4)
    assert np.asarray(new - coord)[0, 0, 0] > 0 and np.asarray(new - coord)[0, 0, 1] < 0  # towards the peak
    assert float(rec[0, 0, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("faithful", [True, False])
def test_parent_prior_with_identical_parents(faithful):
    child = dataclasses.replace(geom1(faithful=faithful), k=1)
    upper = dataclasses.replace(child, stride=16.0)
    n, m, sig = 5, 4, 0.8
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(n, 1, 2)).astype(np.float32)
    up_pos = np.repeat(pos, m, axis=1)  # M identical parents
    prior = pa.parent_prior(jnp.asarray(up_pos), jnp.full((m,), sig, jnp.float32), jnp.arange(m)[None],
                            child=child, upper=upper)
    ratio = 1.0 if faithful else 2.0
    d = (pos - pos.mean(0))[:, 0] * ratio
    s_u = sig * ratio
    np.testing.assert_allclose(np.asarray(prior.delta)[:, 0, 0], d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(prior.s), s_u, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(prior.log_lam)[:, 0, 0], math.log(s_u) - m * math.log(s_u), rtol=1e-5)


def test_init_nodes_distinct_cells_per_filter():
    g = LayerGeom(h=6, w=6, c=4, k=nodes_per_filter(6, 6, 0.25), s=6, r_max=1, max_range=0.3, deform_ratio=3,
                  map_sigma=0.15, init_sigma=0.9, sigma_min=0.2, sigma_max=2, tau=0.1, faithful=False, stride=4,
                  center=2.5)
    coord, sigma = init_nodes(jax.random.PRNGKey(0), g)
    assert coord.shape == (4, 9, 2) and np.all(np.asarray(sigma) == np.float32(0.9))
    for c in range(4):
        cells = {tuple(x) for x in np.asarray(coord[c]).astype(int)}
        assert len(cells) == 9 and all(0 <= a < 6 and 0 <= b < 6 for a, b in cells)
    assert nodes_per_filter(28, 28, 0.05) == 40 and nodes_per_filter(14, 14, 0.1) == 20


def test_normalization_by_negative_std():
    rng = np.random.default_rng(0)
    neg = rng.normal(2.0, 3.0, (400, 2, 2, 3))
    std = negative_std([neg[:150], neg[150:]])
    np.testing.assert_allclose(std, neg.std(0), rtol=1e-5)
    x = np.array([[[[1.0, -2.0, 0.0]] * 2] * 2])
    y = normalize(x, std)
    np.testing.assert_allclose(y[0, ..., 0], 1.0 / std[..., 0], rtol=1e-6)
    assert np.all(y[..., 1:] == -1.0)
