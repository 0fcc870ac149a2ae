"""JAX vs PyTorch benchmarks of every jinterp pipeline (``jinterp bench``, ``make bench``).

One harness (:mod:`jinterp.bench.harness`: agreement first, alternating timed runs, medians) and one module per
pipeline exposing ``cases(quick)``; the PyTorch twins are the ``torch_*`` modules. PyTorch is the optional extra
``jinterp[torch]``. Some twins reuse the parity tests' PyTorch references (``tests/…``), so those pipelines run from
a source checkout only; from an installed package they are skipped with the reason. Importing this package is
light (no JAX, no PyTorch): the ``jinterp`` command builds its help from it.
"""

PIPELINES = ("backbones", "cladec", "csg", "graph", "explainer", "basis")
