"""XLA compiler options for jinterp's hot jitted functions, and a ``jax.jit`` that applies them.

Why: XLA:CPU (jax 0.10) hands reductions to YNNPACK fusions, and YNNPACK reduces over a leading axis slowly
when the kept axes are not multiples of its vector width: ``sum(exp(s), axis=0)`` of a ``(8, 512, 197)`` array
took 7.2 ms against 0.36 ms with XLA's own reduction emitter, ``(32, 64, 257)`` 2.4 vs 0.25 ms; a BatchNorm-style
reduction over ``(N, H, W)`` with 64 kept channels was instead 3x *faster* in YNNPACK. So the choice is per
computation, measured (``experiments/README.md``): the ICNN loss (``(B, C, HW + 1)`` template scores, the
explainer's train step 1.22x faster) and the graph E-step (up to 2.35x) keep YNNPACK for dots only; backbone,
CSG and ClaDec steps keep XLA's default.

The options are set only where the default backend is the CPU, only where this XLA knows them (checked once by
compiling a one-element function), and not at all with ``JINTERP_CPU_TUNING=0`` in the environment.
"""

from __future__ import annotations

import functools
import os
import re

import jax
import jax.numpy as jnp

_DOTS_ONLY_IN_YNN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros((1,), jnp.float32)).compile()
    except Exception:  # an XLA without this option (renamed or removed): compile with the defaults
        return False
    return True


def reductions_outside_ynn() -> dict[str, str]:
    """``compiler_options`` that leave reductions to XLA's own emitter (YNNPACK fuses dots only); ``{}`` off the
    CPU, with ``JINTERP_CPU_TUNING=0``, or where this XLA does not know the option."""
    if os.environ.get("JINTERP_CPU_TUNING", "1") == "0" or jax.default_backend() != "cpu":
        return {}
    return dict(_DOTS_ONLY_IN_YNN) if _accepted(tuple(_DOTS_ONLY_IN_YNN.items())) else {}


class _TunedJit:
    """``jax.jit(fun, **jit_kwargs)`` with :func:`reductions_outside_ynn`, built at the first call or ``lower`` (so
    that importing a module does not initialize a backend)."""

    def __init__(self, fun, jit_kwargs):
        self._fun, self._jit_kwargs = fun, jit_kwargs
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        options = {**self._jit_kwargs.get("compiler_options", {}), **reductions_outside_ynn()}
        return jax.jit(self._fun, **{**self._jit_kwargs, "compiler_options": options or None})

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit_reductions_outside_ynn(fun=None, **jit_kwargs):
    """``jax.jit`` for computations dominated by leading-axis reductions over odd sizes (see the module docstring);
    usable as ``@jit_reductions_outside_ynn(static_argnames=...)`` or ``jit_reductions_outside_ynn(f, ...)``."""
    if fun is None:
        return functools.partial(jit_reductions_outside_ynn, **jit_kwargs)
    return _TunedJit(fun, jit_kwargs)


def ynn_reduction_fusions(hlo_text: str) -> list[str]:
    """Names of the YNNPACK fusions in compiled HLO text (``jitted.lower(...).compile().as_text()``) that reduce
    without a dot: what :func:`reductions_outside_ynn` keeps out; used to check that a step is compiled with it."""
    bodies = dict(re.findall(r"^(?:ENTRY )?%(\S+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S))
    found = []
    for name, callee in re.findall(r"%(\S+) = [^\n]*calls=%([^,\s]+)[^\n]*__ynn_fusion", hlo_text):
        body = bodies.get(callee, "")
        if " reduce(" in body and " dot(" not in body:
            found.append(name)
    return found
