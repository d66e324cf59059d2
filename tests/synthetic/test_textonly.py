"""Text-only facts: every kind's answer checked against arithmetic and word lists written out here."""
import random
import re

import pytest

from synthetic.textonly import FACT_KINDS, sample_fact

WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen twenty".split()


@pytest.mark.parametrize("kind", FACT_KINDS)
def test_fact_answers(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(30):
        f = sample_fact(rng, kind)
        q, a = f.question, f.answer
        assert a in f.sentence or (kind == "shape" and WORDS[int(a)] in f.sentence), f
        if kind == "after":
            assert WORDS.index(a) == WORDS.index(re.search(r"after (\w+)\?", q)[1]) + 1
        elif kind == "before":
            assert WORDS.index(a) == WORDS.index(re.search(r"before (\w+)\?", q)[1]) - 1
        elif kind == "digit":
            assert int(a) == WORDS.index(re.search(r"number (\w+) with", q)[1])
        elif kind == "word":
            assert a == WORDS[int(re.search(r"write (\d+) in", q)[1])]
        elif kind in ("plus", "minus"):
            x, y = map(int, re.findall(r"\d+", q))
            assert int(a) == (x + y if kind == "plus" else x - y) and int(a) >= 0
        elif kind == "bigger":
            assert int(a) == max(map(int, re.findall(r"\d+", q)))
        elif kind == "opposite":
            assert {re.search(r"of (\w+)\?", q)[1], a} in ({"left", "right"}, {"top", "bottom"}, {"above", "below"},
                                                           {"small", "large"}, {"yes", "no"}, {"up", "down"})


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="known: after"):
        sample_fact(random.Random(0), "spelling")
