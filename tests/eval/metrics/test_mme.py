"""MME: the official yes/no parsing, acc+ per image, perception and cognition totals."""
import pytest

from eval.metrics.mme import MMEQuestion, mme_parse, score_mme


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("Not really", "no"), ("I think yes", "other"),
])
def test_mme_parse(text, expected):
    assert mme_parse(text) == expected


def test_mme_acc_plus_and_totals():
    qs = {"a1": MMEQuestion("Yes", "existence", "a.jpg"), "a2": MMEQuestion("No", "existence", "a.jpg"),
          "b1": MMEQuestion("Yes", "existence", "b.jpg"), "b2": MMEQuestion("No", "existence", "b.jpg"),
          "c1": MMEQuestion("Yes", "code_reasoning", "c.png"), "c2": MMEQuestion("No", "code_reasoning", "c.png")}
    preds = {"a1": "Yes", "a2": "No", "b1": "Yes", "b2": "Yes", "c1": "yes", "c2": "no"}
    s = score_mme(preds, qs)
    assert s["subtasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert s["perception"] == 125.0 and s["cognition"] == 200.0
