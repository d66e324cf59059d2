"""GQA (LLaVA's rstrip('.') + lower, exact match) and text-only QA (normalized exact match)."""
from eval.metrics.exact_match import gqa_normalize, score_gqa, score_text_qa


def test_gqa_normalization_is_only_rstrip_and_lower():
    assert gqa_normalize("Yes.") == "yes"
    assert gqa_normalize("The table") == "the table"  # articles are not dropped


def test_gqa_scores_per_type():
    s = score_gqa({"1": "Yes.", "2": "the table"}, {"1": "yes", "2": "table"}, {"1": "verify", "2": "query"})
    assert s["accuracy"] == 50.0 and s["per_type"] == {"query": 0.0, "verify": 100.0}


def test_text_qa_uses_vqa_normalization():
    assert score_text_qa({"1": "Two.", "2": "a cat"}, {"1": "2", "2": "dog"})["accuracy"] == 50.0
