"""The jitted E-step, M-step and parent prior against the loop-by-loop NumPy reference, in both modes."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.methods.graph import estep as es
from jinterp.methods.graph import parents as pa
from jinterp.methods.graph.geometry import LayerGeom
from jinterp.methods.graph.mstep import mstep


def _load_reference():
    """``graph_reference.py`` beside this file, by path (test folders are not packages)."""
    name = "jinterp_tests_graph_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("graph_reference.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ref = _load_reference()


def toy_geom(faithful, h=7, c=2, k=3, max_range=1.0, stride=8.0, center=4.5):
    return LayerGeom(h=h, w=h, c=c, k=k, s=6, r_max=int(ref.mround(max_range * h / 2)), max_range=max_range,
                     deform_ratio=3.0, map_sigma=0.025 * h * 4, init_sigma=0.15 * h, sigma_min=0.2, sigma_max=2.0,
                     tau=0.1, faithful=faithful, stride=stride, center=center)


def toy_case(seed, geom, n=3):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, geom.h, geom.w, geom.c)).astype(np.float32)
    maps[rng.random(maps.shape) < 0.5] = -1.0
    coord = rng.uniform(0, geom.h - 1, (geom.c, geom.k, 2)).astype(np.float32)
    sigma = rng.uniform(0.25, 1.4, (geom.c, geom.k)).astype(np.float32)  # half-sizes 1..4 differ per node
    delta = rng.normal(0, 0.7, (n, geom.c, geom.k, 2)).astype(np.float32)
    s = rng.uniform(0.6, 2.0, (geom.c, geom.k)).astype(np.float32)
    log_lam = rng.uniform(-3, 3, (n, geom.c, geom.k)).astype(np.float32)
    return maps, coord, sigma, es.Prior(jnp.asarray(delta), jnp.asarray(s), jnp.asarray(log_lam))


def ref_estep(geom, maps, coord, sigma, prior):
    return ref.estep(maps.astype(np.float64), coord.astype(np.float64), sigma.astype(np.float64),
                     np.asarray(prior.delta, np.float64), np.asarray(prior.s, np.float64),
                     np.exp(np.asarray(prior.log_lam, np.float64)), s_n=geom.s, max_range=geom.max_range,
                     deform_ratio=geom.deform_ratio, map_sigma=geom.map_sigma, tau=geom.tau, faithful=geom.faithful)


@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_estep_matches_reference(faithful, seed):
    geom = toy_geom(faithful)
    maps, coord, sigma, prior = toy_case(seed, geom)
    got = es.estep(jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma), prior, geom=geom, chunk=2)
    want = ref_estep(geom, maps, coord, sigma, prior)
    scale = math.exp(float(got.log_scale))
    np.testing.assert_allclose(np.asarray(got.A), want["A"].sum(0), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.Gr), want["Gr"].sum(0), rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.T) * scale, want["T"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.Q) * scale, want["Q"].sum(0), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.phi) * scale, want["phi"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.pos), want["pos"], atol=1e-5)


def test_modes_differ_where_the_quirks_bite():
    # Same inputs, different modes: the filter-0 indexing of R/s and the rounding change the statistics.
    g0, g1 = toy_geom(False), toy_geom(True)
    maps, coord, sigma, prior = toy_case(3, g0)
    a = es.estep(jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma), prior, geom=g0, chunk=3)
    b = es.estep(jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma), prior, geom=g1, chunk=3)
    assert not np.allclose(np.asarray(a.Gr[1]), np.asarray(b.Gr[1]), rtol=1e-3)
    # filter 0 is unaffected by the indexing bug; only the rounding differs there
    want = ref_estep(g1, maps, coord, sigma, prior)
    np.testing.assert_allclose(np.asarray(b.A), want["A"].sum(0), rtol=2e-4, atol=1e-6)


def test_chunking_does_not_change_results():
    geom = toy_geom(False)
    maps, coord, sigma, prior = toy_case(4, geom, n=5)
    args = (jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma), prior)
    a = es.estep(*args, geom=geom, chunk=5)
    b = es.estep(*args, geom=geom, chunk=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("faithful", [False, True])
def test_mstep_matches_reference(faithful):
    geom = toy_geom(faithful)
    maps, coord, sigma, prior = toy_case(5, geom)
    stats = es.estep(jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma), prior, geom=geom, chunk=3)
    got = mstep(jnp.asarray(coord), jnp.asarray(sigma), stats, prior.s, 3, geom=geom, eta=1.0)
    want_stats = ref_estep(geom, maps, coord, sigma, prior)
    want = ref.mstep(coord.astype(np.float64), sigma.astype(np.float64), want_stats, np.asarray(prior.s, np.float64),
                     3, eta=1.0, init_sigma=geom.init_sigma, h=geom.h, s_n=geom.s, max_range=geom.max_range,
                     deform_ratio=geom.deform_ratio, sigma_min=geom.sigma_min, sigma_max=geom.sigma_max,
                     faithful=faithful)
    for x, y in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(x), y, rtol=3e-4, atol=1e-5)


@pytest.mark.parametrize("faithful", [False, True])
def test_parents_match_reference(faithful):
    rng = np.random.default_rng(7)
    n = 6
    child = toy_geom(faithful, h=8, c=2, k=3, stride=8.0, center=4.5)
    upper = toy_geom(faithful, h=4, c=3, k=4, stride=16.0, center=8.5)
    up_pos = rng.uniform(0, 3, (n, upper.num_nodes, 2))
    up_prob = rng.random((n, upper.num_nodes))
    up_sigma = rng.uniform(0.3, 1.5, upper.num_nodes)
    pos = rng.uniform(0, 7, (n, child.c, child.k, 2))
    phi = rng.random((n, child.c, child.k))
    kw = dict(top_n=3, top_m=5, min_var_rate=0.25, edge_cut_rate=0.1)
    par, prior = pa.build_prior(up_pos, up_prob, up_sigma, pos.astype(np.float32), phi.astype(np.float32),
                                child=child, upper=upper, memory_mb=1, **kw)
    want_par, delta, s, lam = ref.parents(up_pos.astype(np.float32).astype(np.float64), up_prob, up_sigma,
                                          pos.astype(np.float32).reshape(n, -1, 2).astype(np.float64),
                                          phi.astype(np.float32).reshape(n, -1), child_h=child.h, upper_h=upper.h,
                                          child_stride=child.stride, child_center=child.center,
                                          upper_stride=upper.stride, upper_center=upper.center,
                                          faithful=faithful, **kw)
    np.testing.assert_array_equal(par.reshape(-1, par.shape[-1]), want_par)
    np.testing.assert_allclose(np.asarray(prior.delta).reshape(n, -1, 2), delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(prior.s).reshape(-1), s, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(prior.log_lam).reshape(n, -1), np.log(lam), rtol=1e-4, atol=1e-4)


def test_parent_pool_quirks():
    # An upper node near the right/bottom border of the 4x4 upper map: only the fixed mode (parent H) drops it.
    child = toy_geom(False, h=8)
    upper = toy_geom(False, h=4)
    n = 4
    rng = np.random.default_rng(0)
    up_pos = np.stack([rng.uniform(1.0, 2.0, (n, 3, 2))] * 1)[0]
    up_pos[:, 2] = [3.3, 1.5]  # mean 1-based h = 4.3 -> within 0.1·4 of the 4-cell map's border
    up_pos[:, 2, 0] += rng.normal(0, 0.01, n)
    prob = np.ones((n, 3))
    kw = dict(top_m=10, min_var_rate=0.0, edge_cut_rate=0.1)
    fixed = pa.parent_pool(up_pos, prob, child, upper, **kw)
    faith = pa.parent_pool(up_pos, prob, dataclasses.replace(child, faithful=True), upper, **kw)
    assert 2 not in fixed and 2 in faith
