"""VQAv2 accuracy: leave-one-out values, the unanimous-answers quirk, 2-decimal rounding, per type."""
import pytest

from eval.metrics.vqa import VQAGroundTruth, evalai_question_accuracy, leave_one_out, score_vqa, vqa_question_accuracy


@pytest.mark.parametrize("k,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0)])
def test_leave_one_out_gives_0_3_6_9_10_tenths(k, expected):
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert leave_one_out("cat", answers) == pytest.approx(expected)


def test_unanimous_answers_are_not_normalized():
    assert vqa_question_accuracy("two", ["two"] * 10) == 1.0
    assert vqa_question_accuracy("2", ["two"] * 10) == 0.0  # would be 1.0 with normalization
    assert vqa_question_accuracy("Two", ["two"] * 10) == 0.0  # not even lowercased
    assert vqa_question_accuracy(" two\n", ["two"] * 10) == 1.0  # whitespace is always cleaned


def test_disagreeing_answers_are_normalized_on_both_sides():
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_question_accuracy("two", answers) == pytest.approx(0.9)
    assert vqa_question_accuracy("Two.", answers) == pytest.approx(0.9)
    assert vqa_question_accuracy("the 3", answers) == pytest.approx(1.0)


def test_evalai_always_normalizes():
    assert evalai_question_accuracy("2", ["two"] * 10) == 1.0


def test_score_rounds_means_to_two_decimals_per_type():
    gt = {"1": VQAGroundTruth(("yes",) * 10, "is the", "yes/no"),
          "2": VQAGroundTruth(("red",) * 10, "what color", "other"),
          "3": VQAGroundTruth(("blue",) * 10, "what color", "other")}
    s = score_vqa({"1": "yes", "2": "no", "3": "no"}, gt)
    assert s["accuracy"] == 33.33
    assert s["per_answer_type"] == {"other": 0.0, "yes/no": 100.0}
    assert s["per_question_type"] == {"is the": 100.0, "what color": 0.0}


def test_missing_prediction_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'9'"):
        score_vqa({}, {"9": VQAGroundTruth(("a",) * 10)})
