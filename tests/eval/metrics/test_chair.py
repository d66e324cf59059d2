"""CHAIR_s / CHAIR_i / recall against hand-computed numbers, with plurals, synonyms and multi-word names."""
from __future__ import annotations

import pytest

from eval.metrics.chair import ObjectVocabulary, plural, score_chair

COCO = ["person", "dog", "hot dog", "bus", "dining table", "sports ball", "knife", "couch", "teddy bear", "red circle"]


def test_plural_rules() -> None:
    assert [plural(w) for w in ("dog", "bus", "cross", "box", "bench", "pony", "toy", "knife", "man")] == [
        "dogs", "buses", "crosses", "boxes", "benches", "ponies", "toys", "knives", "men"]


def test_mentions_longest_match_plurals_and_synonyms() -> None:
    vocab = ObjectVocabulary(COCO)
    text = "Two men eat hot dogs at a table; a dog sleeps on the sofa near buses, knives and a Teddy-Bear."
    assert vocab.mentions(text) == ["person", "hot dog", "dining table", "dog", "couch", "bus", "knife",
                                    "teddy bear"]
    assert vocab.mentions("A large red circle and two red circles, a blue circle.") == ["red circle", "red circle"]
    # synonyms apply only to categories the annotations name
    assert ObjectVocabulary(["dog"]).mentions("a man and a sofa") == []


def test_scores_by_hand() -> None:
    vocab = ObjectVocabulary(COCO)
    present = {"1": ["person", "dog"], "2": ["bus"], "3": ["couch", "knife", "sports ball"]}
    preds = {
        "1": "A man walks his dog past a bus.",      # mentions person, dog, bus(absent)      -> hallucinating
        "2": "A bus. Another bus behind it.",          # bus, bus                                 -> clean
        "3": "A ball rolls under the sofa, a dog watches, and a dog barks.",  # ball, couch, dog, dog (2 absent)
    }
    s = score_chair(preds, present, vocab)
    # CHAIR_s = 2 of 3 descriptions; CHAIR_i = 3 absent of 9 mentions; recall = (2 + 1 + 2) of (2 + 1 + 3) objects
    assert s["CHAIR_s"] == round(100 * 2 / 3, 2) == 66.67
    assert (s["mentions"], s["hallucinated_mentions"]) == (9, 3) and s["CHAIR_i"] == 33.33
    assert (s["objects_recalled"], s["objects_present"], s["recall"]) == (5, 6, 83.33)
    assert s["hallucinations"] == {"1": {"hallucinated": ["bus"], "missed": []},
                                   "3": {"hallucinated": ["dog"], "missed": ["knife"]}}


def test_missing_description_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 image"):
        score_chair({"1": "x"}, {"1": ["dog"], "2": ["dog"]}, ObjectVocabulary(["dog"]))
