"""Explanatory graph, JAX vs PyTorch (and vs the loop-based NumPy reference): the E-step, the hot path of EM.

    python -m jinterp.bench.graph [--quick] [--repeats 7]

One call = one E-step over N images of one layer (window gather, smoothed evidence, competition among the
filter's nodes, sufficient statistics, MAP positions), i.e. the per-iteration work of the released code's
``parfor`` body. Scales: the tiny config's convnet ``bn3`` layer (16×16×64, K = 13, 300 images) and the paper's
VGG-16 ``conv5_3`` (14×14×512, K = 20) and ``conv4_3`` (28×28×512, K = 40) layers on a stated number of images
(the paper runs 2000; per-image cost is linear, so the tables report per-call time for N images). The prior is a
random parent-conditioned one (δ, s, λ drawn at random) so every term is exercised. The PyTorch side is
``jinterp/bench/torch_graph.py`` (our vectorized twin; no public non-MATLAB implementation exists). The
``graph.estep_vs_numpy_loop`` rows time the loop-by-loop NumPy reference of the tests (in the PyTorch column) on
toy maps, the speed the issue's ≥ 10× goal refers to.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jinterp.bench import harness
from jinterp.bench.harness import Case, load_by_path, main_for
from jinterp.methods.graph import estep as es
from jinterp.methods.graph.geometry import LayerGeom, mround_np, nodes_per_filter

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "methods" / "graph" / "graph_reference.py"


def _reference():
    return load_by_path(REFERENCE, "jinterp_tests_graph_reference")


def make_geom(h: int, c: int, density: float, faithful: bool = False) -> LayerGeom:
    smax = 1.0 / math.sqrt(density * h * h) * h
    return LayerGeom(h=h, w=h, c=c, k=nodes_per_filter(h, h, density), s=min(6, h), r_max=int(mround_np(0.3 * h / 2)),
                     max_range=0.3, deform_ratio=3.0, map_sigma=0.025 * h, init_sigma=0.15 * h, sigma_min=smax / 10,
                     sigma_max=smax, tau=0.1, faithful=faithful, stride=224 / h, center=(224 / h + 1) / 2)


def make_inputs(geom: LayerGeom, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    maps = rng.gamma(1.0, 1.0, (n, geom.h, geom.w, geom.c)).astype(np.float32)
    maps[rng.random(maps.shape) < 0.6] = -1.0  # inactive marker, as after normalization
    coord = rng.uniform(0, geom.h - 1, (geom.c, geom.k, 2)).astype(np.float32)
    sigma = rng.uniform(geom.sigma_min, geom.sigma_max, (geom.c, geom.k)).astype(np.float32)
    delta = rng.normal(0, 1.0, (n, geom.c, geom.k, 2)).astype(np.float32)
    s = rng.uniform(0.5, 2.0, (geom.c, geom.k)).astype(np.float32)
    log_lam = rng.uniform(-5, 5, (n, geom.c, geom.k)).astype(np.float32)
    return maps, coord, sigma, delta, s, log_lam


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-12, np.max(np.abs(b))))


def _host(out: dict) -> dict:
    """A PyTorch E-step's outputs as host NumPy arrays (they may live on a GPU)."""
    return {k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in out.items()}


def estep_case(name: str, h: int, c: int, density: float, n: int, *, faithful: bool = False) -> Case:
    import torch

    from jinterp.bench import torch_graph

    geom = make_geom(h, c, density, faithful)
    maps, coord, sigma, delta, s, log_lam = make_inputs(geom, n)
    chunk = es.chunk_size(geom, n, 512)
    jargs = (jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma),
             es.Prior(jnp.asarray(delta), jnp.asarray(s), jnp.asarray(log_lam)))
    targs = tuple(torch.from_numpy(x).to(harness.torch_device()) for x in (maps, coord, sigma, delta, s, log_lam))
    tkw = dict(s_n=geom.s, r_max=geom.r_max, max_range=geom.max_range, deform_ratio=geom.deform_ratio,
               map_sigma=geom.map_sigma, tau=geom.tau, faithful=faithful, chunk=chunk)

    def jax_fn():
        return es.estep(*jargs, geom=geom, chunk=chunk)

    def torch_fn():
        with torch.no_grad():
            return torch_graph.estep(*targs, **tkw)

    def check() -> float:
        a, b = jax_fn(), _host(torch_fn())
        # MAP positions are not compared: g·e ties exactly between mirror candidates wherever the evidence is flat
        # (only the kernel floor in the window), and the two frameworks break such ties differently; phi (the max
        # value) is tie-free and compared instead.
        return max(_rel(a.A, b["A"]), _rel(a.Gr, b["Gr"]), _rel(a.T_sum, b["T_sum"]), _rel(a.Q, b["Q"]),
                   _rel(a.T, b["T"]), _rel(a.phi, b["phi"]))

    return Case(pipeline="graph.estep", params={"layer": name, "map": f"{h}x{h}x{c}", "K": geom.k, "images": n,
                                                "mode": "faithful" if faithful else "fixed"},
                jax_fn=jax_fn, torch_fn=torch_fn, check=check, atol=2e-3, items=n,
                jax_lowered=lambda: es.estep.lower(*jargs, geom=geom, chunk=chunk),
                note="max relative difference of A, Gr, T, Q and the MAP score phi")


def numpy_loop_case(h: int = 8, c: int = 4, density: float = 0.1, n: int = 2) -> Case:
    ref = _reference()
    geom = make_geom(h, c, density)
    maps, coord, sigma, delta, s, log_lam = make_inputs(geom, n)
    jargs = (jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma),
             es.Prior(jnp.asarray(delta), jnp.asarray(s), jnp.asarray(log_lam)))
    kw = dict(s_n=geom.s, max_range=geom.max_range, deform_ratio=geom.deform_ratio, map_sigma=geom.map_sigma,
              tau=geom.tau, faithful=False)

    def jax_fn():
        return es.estep(*jargs, geom=geom, chunk=n)

    def loop_fn():
        return ref.estep(maps.astype(np.float64), coord.astype(np.float64), sigma.astype(np.float64),
                         delta.astype(np.float64), s.astype(np.float64), np.exp(log_lam.astype(np.float64)), **kw)

    def check() -> float:
        a, b = jax_fn(), loop_fn()
        scale = math.exp(float(a.log_scale))
        return max(_rel(a.A, b["A"].sum(0)), _rel(a.Gr, b["Gr"].sum(0)), _rel(np.asarray(a.T) * scale, b["T"]))

    return Case(pipeline="graph.estep_vs_numpy_loop", params={"map": f"{h}x{h}x{c}", "K": geom.k, "images": n},
                jax_fn=jax_fn, torch_fn=loop_fn, check=check, atol=2e-3, items=n,
                note="PyTorch column = the loop-by-loop NumPy reference (tests/methods/graph/graph_reference.py)")


def em_iteration_case(name: str, h: int, c: int, density: float, n: int, *, memory_mb: int = 256,
                      repeats: int | None = None, warmup: int | None = None) -> Case:
    """One EM iteration at scale: the E-step over all ``n`` images, streamed in chunks sized by the graph program's
    own ``estep.chunk_size(geom, n, memory_mb)`` (bounded temporaries), then the M-step (fixed mode). Random maps
    and prior of the layer's shape (not VGG-16 features: the cost depends on the shape only). Both frameworks
    use the same chunk size. Agreement: the updated centers, scales and ``prob_record``. ``repeats`` /
    ``warmup``: the row's own counts (a 2000-image iteration takes minutes per call).

    Memory, in the row: ``jax_temp_mb`` (XLA's temporaries of the compiled iteration: the chunk's working set plus
    the (N, C, H, W) copy of the maps the scan reads, which is linear in N like the inputs themselves),
    ``inputs_mb`` (maps + prior) and ``peak_rss_mb`` (the process's high-water mark, both frameworks and all
    earlier rows included)."""
    import torch

    from jinterp.bench import torch_graph
    from jinterp.methods.graph.mstep import mstep

    geom = make_geom(h, c, density)
    maps, coord, sigma, delta, s, log_lam = make_inputs(geom, n)
    chunk = es.chunk_size(geom, n, memory_mb)
    jargs = (jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma),
             es.Prior(jnp.asarray(delta), jnp.asarray(s), jnp.asarray(log_lam)))
    targs = tuple(torch.from_numpy(x).to(harness.torch_device()) for x in (maps, coord, sigma, delta, s, log_lam))
    tkw = dict(s_n=geom.s, r_max=geom.r_max, max_range=geom.max_range, deform_ratio=geom.deform_ratio,
               map_sigma=geom.map_sigma, tau=geom.tau, faithful=False, chunk=chunk)
    mkw = dict(s_n=geom.s, h=geom.h, max_range=geom.max_range, deform_ratio=geom.deform_ratio,
               sigma_min=geom.sigma_min, sigma_max=geom.sigma_max)

    def jax_fn():
        stats = es.estep(*jargs, geom=geom, chunk=chunk)
        return mstep(jargs[1], jargs[2], stats, jargs[3].s, 1, geom=geom)

    def torch_fn():
        with torch.no_grad():
            stats = torch_graph.estep(*targs, **tkw)
            return torch_graph.mstep(targs[1], targs[2], stats, targs[4], 1, **mkw)

    def check() -> float:
        a, b = jax_fn(), [t.cpu().numpy() for t in torch_fn()]
        moved = _rel(np.asarray(a[0]) - coord, b[0] - coord)     # the move, not the (large) centers
        return max(moved, _rel(a[1], b[1]), _rel(a[2], b[2]))

    def memory() -> dict:
        compiled = es.estep.lower(*jargs, geom=geom, chunk=chunk).compile()
        analysis = compiled.memory_analysis()
        out = {"inputs_mb": sum(x.nbytes for x in (maps, delta, log_lam, coord, sigma, s)) / 2**20,
               "peak_rss_mb": harness.peak_rss_mb()}
        if analysis is not None:
            out["jax_temp_mb"] = analysis.temp_size_in_bytes / 2**20
        return out

    return Case(pipeline="graph.em_iteration", params={"layer": name, "map": f"{h}x{h}x{c}", "K": geom.k,
                                                       "images": n, "chunk": chunk, "memory_mb": memory_mb},
                jax_fn=jax_fn, torch_fn=torch_fn, check=check, atol=2e-3, items=n, repeats=repeats,
                warmup=warmup, extra=memory,
                note="E-step over all images in chunks + M-step; random maps of the layer's shape")


PAPER_IMAGES = 2000  # images per EM iteration in the paper's VGG-16 runs


def cases(quick: bool) -> list[Case]:
    if quick:
        return [estep_case("convnet bn3 (tiny)", 16, 64, 0.05, 32), estep_case("vgg16 conv5_3", 14, 512, 0.1, 2),
                numpy_loop_case(), em_iteration_case("vgg16 conv5_3", 14, 512, 0.1, 3, memory_mb=1)]
    return [estep_case("convnet bn3 (tiny)", 16, 64, 0.05, 300),
            estep_case("convnet bn3 (tiny)", 16, 64, 0.05, 300, faithful=True),
            estep_case("vgg16 conv5_3", 14, 512, 0.1, 16),
            estep_case("vgg16 conv4_3", 28, 512, 0.05, 2),
            numpy_loop_case(),
            # The paper's scale: 2000 images streamed in chunks of a 256 MB budget (2 images), one EM iteration per
            # call. One call takes minutes on a 2-core CPU (PyTorch ~4x JAX), so this row alone runs 1 warm-up + 2
            # repeats; the time is linear in the images (experiments/README.md, explanatory-graph benchmark).
            em_iteration_case("vgg16 conv5_3", 14, 512, 0.1, PAPER_IMAGES, memory_mb=256, warmup=1, repeats=2)]


def main(argv=None):
    return main_for(cases, argv, "graph")


if __name__ == "__main__":
    main()
