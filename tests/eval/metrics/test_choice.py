"""ScienceQA answer parsing (LLaVA's rules), MMBench circular evaluation, SEED letter accuracy."""
import pytest

from eval.metrics.choice import ChoiceQuestion, extract_letter, score_choice, score_scienceqa, sqa_parse


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("B. Paris", "B"), ("The answer is B.", "B"), ("I think so. The answer is C, surely", "C"),
    ("The answer is B. The answer is C.", None), ("The answer is B", None), ("b", None), ("B.", None),
    ("(B)", None),
])
def test_sqa_parse(text, expected):
    assert sqa_parse(text) == expected


def test_scienceqa_letter_beyond_choices_is_wrong():
    gold = {"1": (1, 2), "2": (2, 3), "3": (0, 2)}
    s = score_scienceqa({"1": "B", "2": "The answer is C.", "3": "C"}, gold)
    assert s["correct"] == 2 and s["accuracy"] == 66.67


def test_extract_letter():
    opts = ("red", "green", "blue")
    assert extract_letter("B", opts) == "B"
    assert extract_letter("(C) blue", opts) == "C"
    assert extract_letter("green.", opts) == "B"
    assert extract_letter("D", opts) is None
    assert extract_letter("Both", opts) is None


def test_mmbench_circular_needs_every_rotation_right():
    qs = {"q@0": ChoiceQuestion(("a", "b", "c"), "B", "q"), "q@1": ChoiceQuestion(("b", "c", "a"), "A", "q"),
          "q@2": ChoiceQuestion(("c", "a", "b"), "C", "q"),
          "r@0": ChoiceQuestion(("x", "y"), "A", "r"), "r@1": ChoiceQuestion(("y", "x"), "B", "r")}
    all_right = {"q@0": "B", "q@1": "A", "q@2": "C", "r@0": "A", "r@1": "B"}
    assert score_choice(all_right, qs, circular=True)["circular_accuracy"] == 100.0
    one_wrong = dict(all_right, **{"q@2": "A"})
    s = score_choice(one_wrong, qs, circular=True)
    assert s["circular_accuracy"] == 50.0 and s["per_question_accuracy"] == 80.0


def test_seed_per_category():
    qs = {"1": ChoiceQuestion(("a", "b", "c", "d"), "A", category="Scene"),
          "2": ChoiceQuestion(("a", "b", "c", "d"), "D", category="Count")}
    s = score_choice({"1": "A", "2": "B"}, qs)
    assert s["accuracy"] == 50.0 and s["per_category"] == {"Count": 0.0, "Scene": 100.0}
