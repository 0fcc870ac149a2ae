"""Bounded device memory of the explanatory graph's E-step: chunking over images caps XLA's temporary buffers.

XLA's own memory analysis of the compiled E-step (what the device must hold besides inputs and outputs) is read
for growing numbers of images at a fixed chunk: per extra image it grows by about one copy of that image's input
maps (measured: 1296 bytes = 9x9x4 float32), while the unchunked program grows by the per-node kernel x window
temporaries (~16x more). Deterministic (compile-time figures), so no timing or RSS noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp

from jinterp.methods.graph import estep as es


def _toy():
    name = "jinterp_tests_graph_em_reference"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "methods" / "graph" / "test_em_reference.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _temp_bytes(geom, n, chunk):
    maps, coord, sigma, prior = _toy().toy_case(0, geom, n=n)
    compiled = es.estep.lower(jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma), prior, geom=geom,
                              chunk=chunk).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_estep_temporaries_are_bounded_by_the_chunk():
    geom = _toy().toy_geom(False, h=9, c=4, k=5)
    chunk = 4
    chunked = {n: _temp_bytes(geom, n, chunk) for n in (16, 64, 256)}
    whole = {n: _temp_bytes(geom, n, n) for n in (16, 64)}
    map_bytes = geom.h * geom.w * geom.c * 4  # one image's input maps
    per_image_whole = (whole[64] - whole[16]) / 48
    per_image_chunked = (chunked[256] - chunked[16]) / 240
    # Unchunked, every image adds its per-node kernel x window tensors (here ~16x its input maps)...
    assert per_image_whole > 10 * map_bytes, (per_image_whole, map_bytes)
    # ...chunked, an image adds only about one (transposed, padded) copy of its input maps and its outputs: the
    # large temporaries live once per chunk, whatever the data set's size.
    assert per_image_chunked <= 1.5 * map_bytes, (per_image_chunked, map_bytes)
    assert chunked[256] < whole[64] / 2, (chunked, whole)
    # The memory budget picks the chunk: a smaller budget never gives a larger chunk, and at least 1 image.
    sizes = [es.chunk_size(geom, 10_000, mb) for mb in (1, 8, 64, 512)]
    assert sizes == sorted(sizes) and sizes[0] >= 1
