"""POPE: LLaVA's yes/no parsing and the metrics per split, numbers derived by hand."""
import pytest

from eval.metrics.pope import pope_metrics, pope_parse, score_pope


@pytest.mark.parametrize("text,expected", [
    ("No, there is not.", "no"), ("Yes, there is a dog.", "yes"), ("There is no dog", "no"),
    ("not sure. no", "no"), ("Yes. No.", "yes"), ("NO", "yes"), ("yes", "yes"), ("no", "no"),
])
def test_pope_parse(text, expected):
    assert pope_parse(text) == expected


def test_pope_metrics_by_hand():
    m = pope_metrics(["Yes", "yes", "No, there is not.", "no"], ["yes", "no", "no", "yes"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1)
    assert m["accuracy"] == m["precision"] == m["recall"] == m["f1"] == m["yes_ratio"] == 0.5
    m = pope_metrics(["yes", "yes", "yes"], ["yes", "yes", "no"])
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["f1"] == pytest.approx(0.8)


def test_pope_mean_f1_over_splits():
    labels = {"r1": "yes", "r2": "no", "p1": "yes", "p2": "no"}
    splits = {"r1": "random", "r2": "random", "p1": "popular", "p2": "popular"}
    s = score_pope({"r1": "yes", "r2": "no", "p1": "no", "p2": "no"}, labels, splits)
    assert s["per_split"]["random"]["f1"] == 1.0 and s["per_split"]["popular"]["f1"] == 0.0
    assert s["f1"] == 50.0
