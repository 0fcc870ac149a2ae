"""The model-randomization check (Adebayo et al., NeurIPS 2018) shared by every method: one helper re-initializes the
weights for all five programs, the verdict says in words whether a result survives it, and CSG's check evaluates
a network that learned nothing with the learned gate kept (issue #20)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from jinterp import backbones
from jinterp.metrics import baselines as B


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_one_helper_reinitializes_for_every_program():
    from jinterp.methods.explainer import ExplainerConfig
    from jinterp.methods.explainer import program as explainer

    model = backbones.create("convnet", 6, widths=(4, 4, 8, 8))
    a = B.randomized_weights(model, 3, (16, 16, 3))
    again = B.randomized_weights(model, 3, (16, 16, 3))
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(again), strict=True))  # deterministic
    # another draw than a run's own init from the same seed, and than another seed
    own_init = backbones.init(model, jax.random.PRNGKey(3), (16, 16, 3))
    for other in (own_init, B.randomized_weights(model, 4, (16, 16, 3))):
        kernels = [(x, y) for x, y in zip(_leaves(a), _leaves(other), strict=True) if x.ndim == 4]
        assert kernels and all(not np.allclose(x, y) for x, y in kernels)
    # the explainer's performer randomization is this helper (no copy that could drift)
    cfg = dataclasses.replace(ExplainerConfig.tiny(), seed=3)
    e = explainer.randomized_performer(model, cfg, (16, 16, 3))
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(e), strict=True))


@pytest.mark.parametrize("lower", [False, True])
def test_randomization_verdict_says_whether_the_result_survives(lower):
    sign = -1 if lower else 1
    better, worse = 0.5 + sign * 0.2, 0.5
    depends = B.randomization_verdict("score", better, worse, lower_is_better=lower)
    assert depends["survives_randomization"] is False
    assert "depends on what the network learned" in depends["text"] and "SURVIVES" not in depends["text"]
    for randomized in (better, 0.5 + sign * 0.4):  # as good, or better, on random weights
        v = B.randomization_verdict("score", better, randomized, lower_is_better=lower)
        assert v["survives_randomization"] is True and "SURVIVES randomization" in v["text"]
    # within the margin (seeds' spread or the default 5 % of the randomized number) it still survives
    close = 0.5 + sign * 0.01
    assert B.randomization_verdict("score", close, worse, lower_is_better=lower)["survives_randomization"] is True
    assert B.randomization_verdict("score", better, worse, lower_is_better=lower,
                                   margin=0.3)["survives_randomization"] is True
    nan = B.randomization_verdict("score", float("nan"), worse, lower_is_better=lower)
    assert nan["survives_randomization"] is True and "undefined" in nan["text"]


def test_csg_randomizes_the_trained_models_and_keeps_the_gate():
    from jinterp.methods.csg import CSGConfig, program
    from jinterp.methods.csg import gate as gates
    from jinterp.methods.csg import train as csgtrain

    model = backbones.create("convnet", 4, widths=(4, 4, 8, 8))
    v = backbones.init(model, jax.random.key(0), (16, 16, 3))
    site = gates.gate_site(model)
    cfg = dataclasses.replace(CSGConfig.tiny(), widths=(4, 4, 8, 8), seed=5)
    state = csgtrain.Trainer(model, site, cfg, 4, (0.0,) * 3, (1.0,) * 3).init_state(
        v, gates.num_filters(model, site, v, (16, 16, 3)))
    runs = {"csg": {"state": state}, "standard": {"state": state}}
    assert program.randomize_trained(cfg, model, (16, 16, 3), runs) is runs  # flag off: untouched
    out = program.randomize_trained(dataclasses.replace(cfg, randomize_backbone=True), model, (16, 16, 3), runs)
    fresh = B.randomized_weights(model, 5, (16, 16, 3))
    for name in ("csg", "standard"):
        st = out[name]["state"]
        assert out[name]["randomized"] is True
        assert all(np.array_equal(x, y) for x, y in zip(_leaves(st["params"]["backbone"]), _leaves(fresh["params"]),
                                                        strict=True))
        assert np.array_equal(np.asarray(st["params"]["gate"]), np.asarray(state["params"]["gate"]))
        assert all(np.array_equal(x, y) for x, y in zip(
            _leaves(st["model_state"]), _leaves({k: x for k, x in fresh.items() if k != "params"}), strict=True))


def _csg_models(mis, iou, auc):
    return {"mis": mis, "localization": {"cam": {"iou": iou}}, "adversarial": {"pgd": {"auc_gate": auc}}}


def test_csg_randomization_check_uses_the_seeds_spread():
    from jinterp.methods.csg.program import randomization_check

    trained = {"models": {"csg": _csg_models(0.30, 0.40, 0.9)}}
    randomized = {"models": {"csg": _csg_models(0.20, 0.45, 0.5)}}
    out = randomization_check(trained, randomized)
    assert set(out) == {"mis", "localization_cam", "adversarial_pgd"}
    assert not out["mis"]["survives_randomization"] and not out["adversarial_pgd"]["survives_randomization"]
    assert out["localization_cam"]["survives_randomization"]  # random weights localize better here
    assert "CSG MIS" in out["mis"]["text"]
    # the same MIS gap inside the seeds' spread no longer counts as depending on training
    spread = {**trained, "models_std": {"csg": {"mis": 0.2}}}
    assert randomization_check(spread, randomized)["mis"]["survives_randomization"]


def test_cladec_and_basis_randomization_checks_pick_their_numbers():
    from jinterp.methods.basis.program import randomization_check as basis_check
    from jinterp.methods.cladec.program import randomization_check as cladec_check

    src = lambda m: {"refae": {"mse": 0.01}, "cladec@0": {"mse": m}, "original": {"frozen_accuracy": 0.9}}  # noqa: E731
    out = cladec_check({"layers": {"relu3": {"sources": src(0.02)}}}, {"layers": {"relu3": {"sources": src(0.05)}}})
    assert set(out) == {"relu3 cladec@0 mse"} and not out["relu3 cladec@0 mse"]["survives_randomization"]
    out = cladec_check({"layers": {"relu3": {"sources": src(0.05)}}}, {"layers": {"relu3": {"sources": src(0.02)}}})
    assert out["relu3 cladec@0 mse"]["survives_randomization"]  # random features decode better: not about training
    bases = lambda s1: {"uibe@own": {"S1": s1, "S2": s1 / 2}, "random@q": {"S1": 9.0, "S2": 9.0}}  # noqa: E731
    out = basis_check({"bases": bases(4.0)}, {"bases": bases(1.0)})
    assert set(out) == {"uibe@own S1", "uibe@own S2"}
    assert not any(v["survives_randomization"] for v in out.values())
    assert all(v["survives_randomization"] for v in basis_check({"bases": bases(1.0)}, {"bases": bases(4.0)}).values())


def test_report_states_the_randomization_verdict_for_every_method():
    from jinterp.report import demo, randomization

    assert set(demo.RANDOMIZATION_CHECK) == {"explainer", "graph", "basis", "cladec", "csg"}
    inst = lambda v: {"instability": {"explainer_interp2": {"value": v}, "explainer_interp2_masked": {"value": v}}}  # noqa: E731
    out = randomization.checks("explainer", inst(0.05), inst(0.05))
    assert set(out) == {"explainer_interp2", "explainer_interp2_masked"}
    assert all(v["survives_randomization"] for v in out.values())
    graph = lambda v: {"metrics": {"instability_icnn_nodes": v, "fewshot_normalized_distance_nodes": v}}  # noqa: E731
    out = randomization.checks("graph", graph(0.02), graph(0.10))
    assert set(out) == {"instability_icnn_nodes", "fewshot_normalized_distance_nodes"}
    assert not any(v["survives_randomization"] for v in out.values())
    csg = {"models": {"csg": _csg_models(0.3, 0.4, 0.9)}}
    assert set(randomization.checks("csg", csg, csg)) == {"mis", "localization_cam", "adversarial_pgd"}
    # the section of a results dict that carries its randomized twin says it in words, warnings first
    res = {"bases": {"uibe@own": {"S1": 1.0, "S2": 0.5}}, "randomization_check": {"bases": {"uibe@own": {"S1": 2.0,
                                                                                                           "S2": 0.1}}}}
    section = demo.section_for("basis", res, Path("."), 1.0)
    said = [n for n in section.notes if "random weights" in n]
    assert len(said) == 2 and "uibe@own S1" in said[0] and "SURVIVES" in said[0] and "SURVIVES" not in said[1]
