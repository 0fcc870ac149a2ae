"""The model-randomization check in words (Adebayo et al., NeurIPS 2018, "Sanity checks for saliency maps").

Every method runs a second time on the same architecture with re-initialized weights (its ``randomize_backbone``
setting); :func:`checks` compares each headline number of the two runs with
:func:`jinterp.metrics.baselines.randomization_verdict` and says whether the result *survives* randomization, i.e.
is not about what the network learned. Basis, CSG and ClaDec pick their numbers in their programs'
``randomization_check``; the explainer's and the graph's are picked here.
"""

from __future__ import annotations

import importlib
from typing import Any

from jinterp.metrics.baselines import randomization_verdict


def _explainer(trained: dict, randomized: dict) -> dict[str, dict]:
    out = {}
    for key in ("explainer_interp2_masked", "explainer_interp2"):
        a = ((trained.get("instability") or {}).get(key) or {}).get("value")
        b = ((randomized.get("instability") or {}).get(key) or {}).get("value")
        if a is not None and b is not None:
            out[key] = randomization_verdict(f"{key.replace('_', ' ')}: location instability", a, b,
                                             lower_is_better=True)
    return out


def _graph(trained: dict, randomized: dict) -> dict[str, dict]:
    a, b = trained.get("metrics") or {}, randomized.get("metrics") or {}
    out = {}
    for key, label in (("instability_icnn_nodes", "graph nodes: location instability (ICNN-code variant)"),
                       ("fewshot_normalized_distance_nodes", "graph nodes: few-shot normalized distance")):
        if a.get(key) is not None and b.get(key) is not None:
            out[key] = randomization_verdict(label, a[key], b[key], lower_is_better=True)
    return out


_LOCAL = {"explainer": _explainer, "graph": _graph}

# What a CLI prints first when its run was the randomized twin (``randomize_backbone``).
RANDOMIZED_RUN_NOTE = ("this run used a randomly re-initialized network (randomize_backbone): its numbers are the "
                       "model-randomization check, not a result about the trained network.")


def cli_lines(results: dict, verdicts: list[str]) -> list[str]:
    """The lines a method's CLI prints under its summary: the randomized-run note when it applies, then each
    verdict sentence."""
    head = [RANDOMIZED_RUN_NOTE] if results.get("randomize_backbone") else []
    return [f"  verdict: {t}" for t in head + [v for v in verdicts if v]]


def checks(method: str, trained: dict, randomized: dict) -> dict[str, dict[str, Any]]:
    """``{name: randomization_verdict(...)}`` for one method's trained and randomized ``results.json``."""
    if method in _LOCAL:
        return _LOCAL[method](trained, randomized)
    program = importlib.import_module(f"jinterp.methods.{method}.program")
    fn = getattr(program, "randomization_check", None)
    return fn(trained, randomized) if fn is not None else {}


def notes(method: str, trained: dict, randomized: dict) -> list[str]:
    """The verdicts as report sentences, those that survive (the warnings) first."""
    found = list(checks(method, trained, randomized).values())
    return [v["text"] for v in sorted(found, key=lambda v: not v["survives_randomization"])]
