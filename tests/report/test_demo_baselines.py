"""The demo's explainer, graph and CSG sections: every method number beside its baselines, a result that does not
beat them marked in words, the randomized-network row, and MIS read the right way round (issue #20)."""

from __future__ import annotations

from jinterp.metrics import baselines as B
from jinterp.report import demo


def _inst(method, centre=0.07, mean=0.08, random=0.13, label="x"):
    vals = {"method": method, "centre": centre, "mean_position": mean, "random": random}
    s = B.instability_summary(vals, label=label)
    return {**vals, "beats_baselines": s["beats_baselines"], "verdict": s["text"]}


def _explainer_results(value):
    sets = ("explainer_interp2", "performer_relu3")
    return {"layer": "relu3", "target": "relu4",
            "instability": {k: {"value": value} for k in sets},
            "instability_baselines": {k: _inst(value, label=k) for k in sets},
            "filter_diversity": {k: {"share_on_most_common_cell": 0.31, "parts_covered": 2, "collapsed": True,
                                     "verdict": "31% of the filters peak on the same cell"} for k in sets}}


def _rows(table):
    return [list(r) for r in table.rows]


def test_explainer_section_puts_baselines_verdicts_and_the_randomized_row_beside_the_number():
    r = {**_explainer_results(0.05), "randomization_check": _explainer_results(0.09)}
    _, tables, notes = demo._explainer_section(r)
    head, rows = tables[0].header, _rows(tables[0])
    assert {"fixed at centre", "fixed at own mean", "random positions", "beats all baselines"} <= set(head)
    trained = [row for row in rows if row[1] == "explainer"]
    randomized = [row for row in rows if row[1] == demo.RANDOM_ROW]
    assert trained and randomized
    col = head.index("beats all baselines")
    assert trained[0][col] == "yes" and randomized[0][col] == "NO"   # 0.09 loses to the centre (0.07)
    assert trained[0][head.index("fixed at centre")] == 0.07
    assert trained[0][head.index("share of filters on the most common cell")] == 0.31
    assert any("does NOT beat" in n and n.startswith(demo.RANDOM_ROW) for n in notes)
    assert any("31% of the filters" in n for n in notes)


def test_graph_section_shows_instability_and_localization_baselines_and_randomization():
    loc = {"method": 0.098, "image_blind": 0.091, "centre": 0.2, "random": 0.3, "filters": 0.12}
    s = B.localization_summary(loc)
    metrics = {"instability_graph_nodes": 0.04, "instability_graph_filters": 0.12, "instability_icnn_nodes": 0.05,
               "instability_icnn_filters": 0.1, "fewshot_normalized_distance_nodes": 0.098,
               "fewshot_normalized_distance_filters": 0.12,
               "instability_baselines": {"bn3": {"nodes_graph": _inst(0.04, centre=0.017, mean=0.029)}},
               "localization_baselines": {**loc, "beats_baselines": s["beats_baselines"], "verdict": s["text"]}}
    rnd = {"metrics": {**metrics, "instability_graph_nodes": 0.045}}
    _, tables, notes = demo._graph_section({"metrics": metrics, "randomization_check": rnd, "layers": []})
    assert tables[0].header[-1].endswith(demo.RANDOM_ROW) and _rows(tables[0])[0][-1] == 0.045
    base = _rows(tables[1])
    assert base[0][1:] == [0.04, 0.017, 0.029, 0.13, "NO"]
    assert base[1][-1] == "NO" and "image-blind 0.091" in base[1][3]   # the image-blind predictor wins
    assert sum("does NOT beat" in n for n in notes) >= 2


def test_csg_section_reads_mis_as_higher_is_more_class_specific():
    r = {"models": {"csg": {"accuracy": 0.9, "mis": 0.4}, "standard": {"accuracy": 0.9, "mis": 0.37}}}
    _, tables, _ = demo._csg_section(r)
    label = _rows(tables[0])[1][0]
    assert "higher = more class-specific" in label and "lower" not in label


def test_csg_label_leak_note_is_words_not_a_raw_dict():
    """Issue #17 defect 6: the report printed the observation as a JSON dict and cited 'spec issue #6'."""
    obs = {"mean_train_accuracy_gated_epochs": 0.97, "mean_train_accuracy_std_epochs_after_warmup": 0.9,
           "mean_test_accuracy_change_over_gated_epoch": -0.01}
    _, _, notes = demo._csg_section({"models": {"csg": {"accuracy": 0.9}, "standard": {"accuracy": 0.91}},
                                     "issue6_observation": obs})
    note = next(n for n in notes if "label leak" in n.lower())
    assert "{" not in note and "issue #" not in note
    assert "97.0 %" in note and "90.0 %" in note and "-1.0 points" in note
