"""Official VQA / EvalAI normalization, case by case from the scorers' rules."""
from eval.metrics.answer_normalize import evalai_normalize, process_digit_article, process_punctuation, vqa_normalize


def test_punctuation_touching_a_space_is_deleted_else_replaced_by_space():
    assert process_punctuation("yes , no") == "yes  no"
    assert process_punctuation("black-white") == "black white"
    assert process_punctuation("black -white") == "black white"
    assert process_punctuation("hello!") == "hello "


def test_digit_comma_digit_anywhere_deletes_all_punctuation():
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("red-blue 1,5") == "redblue 15"  # '-' deleted, not spaced, because of 1,5


def test_periods_removed_unless_followed_by_digit():
    assert process_punctuation("3.5") == "3.5"
    assert process_punctuation("end.") == "end"
    assert process_punctuation("a.b") == "ab"
    assert process_punctuation("x.5") == "x.5"  # the official "(?!<=\d)" never looks behind


def test_at_most_32_periods_removed():
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("." * 32) == ""


def test_digit_article_step():
    assert process_digit_article("The Two dogs") == "2 dogs"
    assert process_digit_article("dont know") == "don't know"
    assert process_digit_article("an isnt") == "isn't"
    assert process_digit_article("none") == "0"
    assert process_digit_article("Im here") == "im here"  # capitalised table keys never match after lower()


def test_vqa_normalize_whole_chain():
    assert vqa_normalize("  Two\tdogs.\n") == "2 dogs"


def test_evalai_splits_possessive_and_lowercases():
    assert evalai_normalize("The Man's hat, 3.5") == "man 's hat 3.5"
    assert evalai_normalize("What?") == "what"
