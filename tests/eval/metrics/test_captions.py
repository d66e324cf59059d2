"""Caption metrics through pycocoevalcap (Java): BLEU brevity penalty, one-image CIDEr, missing Java."""
import math

import pytest

from eval.metrics import captions
from eval.metrics.captions import JavaMissingError, score_captions


def test_bleu_brevity_penalty_and_one_image_cider():
    s = score_captions({"1": "A cat."}, {"1": ["a cat sits on the mat"]}, meteor=False)
    # all candidate unigrams match, c = 2, r = 6: BLEU-1 = exp(1 - 6/2)
    assert s["BLEU-1"] == round(100 * math.exp(1 - 6 / 2), 2)
    assert s["CIDEr"] == 0.0  # idf = log(1 image) = 0
    assert any("SPICE" in n for n in s["notes"])


def test_missing_caption_is_named():
    with pytest.raises(ValueError, match="'2'"):
        score_captions({"1": "x"}, {"1": ["x"], "2": ["y"]}, meteor=False)


def test_without_java_the_error_names_it(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    with pytest.raises(JavaMissingError, match="java"):
        score_captions({"1": "x"}, {"1": ["x"]})


@pytest.mark.slow
def test_meteor_runs_offline_and_perfect_match_scores_high():
    refs = {"1": ["a dog runs in the park"], "2": ["two cats sleep on a sofa"]}
    s = score_captions({"1": "a dog runs in the park", "2": "two cats sleep on a sofa"}, refs)
    assert s["METEOR"] > 90 and s["BLEU-4"] > 99 and s["ROUGE-L"] == 100.0
