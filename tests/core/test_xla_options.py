"""jinterp.core.xla_options: the per-computation XLA:CPU options are applied, switchable, and safe on other XLAs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.core import xla_options


def _leading_axis_lse(s):
    return jnp.log(jnp.sum(jnp.exp(s - 1.0), axis=0))


def _hlo(jitted, x) -> str:
    return jitted.lower(x).compile().as_text()


S = np.random.default_rng(0).normal(size=(8, 64, 197)).astype(np.float32)


def test_tuned_jit_keeps_the_reduction_out_of_ynnpack_and_the_value():
    if jax.default_backend() != "cpu":
        pytest.skip("the options are CPU-only")
    if not xla_options.ynn_reduction_fusions(_hlo(jax.jit(_leading_axis_lse), S)):
        pytest.skip("this XLA does not fuse reductions into YNNPACK; nothing to move")
    tuned = xla_options.jit_reductions_outside_ynn(_leading_axis_lse)
    assert xla_options.ynn_reduction_fusions(_hlo(tuned, S)) == []
    np.testing.assert_allclose(tuned(S), jax.jit(_leading_axis_lse)(S), rtol=1e-6, atol=1e-6)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("JINTERP_CPU_TUNING", "0")
    assert xla_options.reductions_outside_ynn() == {}
    monkeypatch.setenv("JINTERP_CPU_TUNING", "1")
    expected = xla_options._DOTS_ONLY_IN_YNN if jax.default_backend() == "cpu" else {}
    assert xla_options.reductions_outside_ynn() == expected


def test_an_option_this_xla_does_not_know_falls_back_to_the_defaults(monkeypatch):
    monkeypatch.setattr(xla_options, "_DOTS_ONLY_IN_YNN", {"xla_cpu_no_such_option_in_any_xla": "1"})
    assert xla_options.reductions_outside_ynn() == {}
    tuned = xla_options.jit_reductions_outside_ynn(lambda x: x * 2.0, donate_argnums=())
    np.testing.assert_allclose(tuned(jnp.ones(3)), 2.0)


def test_decorator_form_keeps_static_arguments_and_lower():
    @xla_options.jit_reductions_outside_ynn(static_argnames=("axis",))
    def total(x, *, axis):
        return jnp.sum(x, axis=axis)

    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(total(x, axis=1), [3.0, 12.0])
    assert "reduce" in total.lower(x, axis=0).as_text()


def test_the_graph_estep_is_compiled_with_reductions_outside_ynn():
    from jinterp.bench.graph import make_geom, make_inputs
    from jinterp.methods.graph import estep as es

    geom = make_geom(16, 64, 0.1)
    maps, coord, sigma, delta, s, log_lam = make_inputs(geom, 4)
    args = (jnp.asarray(maps), jnp.asarray(coord), jnp.asarray(sigma),
            es.Prior(jnp.asarray(delta), jnp.asarray(s), jnp.asarray(log_lam)))
    plain = jax.jit(es.estep.__wrapped__, static_argnames=("geom", "chunk"))
    if jax.default_backend() != "cpu" or not xla_options.ynn_reduction_fusions(
            plain.lower(*args, geom=geom, chunk=2).compile().as_text()):
        pytest.skip("no YNNPACK reductions to keep out on this backend / XLA")
    assert xla_options.ynn_reduction_fusions(es.estep.lower(*args, geom=geom, chunk=2).compile().as_text()) == []
