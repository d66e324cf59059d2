"""The LLM's corpus: inventories and one-question chats, the records stage 0's lookup warm-up trains on."""
import random

from synthetic.corpus import LESSONS, answer_record, corpus_records, corpus_scene_records, inventory_record, lesson
from synthetic.questions import SHORT_ANSWER_SUFFIX, candidates
from synthetic.world import ALL_PAIRS, sample_scene


def _scenes(n: int):
    return [sample_scene(3, "corpus", i, held_out_share=0.0) for i in range(n)]


def test_inventory_lists_every_object_sorted_and_is_a_lookup_only_when_keys_are_unique() -> None:
    rng = random.Random(0)
    flags = set()
    for scene in _scenes(60):
        record = inventory_record(scene, rng)
        prompt, reply = (t["value"] for t in record["conversations"])
        asked = prompt.removeprefix("<image>\nList every object by its ").removesuffix(".")
        key, value = asked.split(", each followed by its ")
        word = {"shape": lambda o: o.shape, "color": lambda o: o.colour, "size": lambda o: o.size,
                "position": lambda o: o.position}
        expected = sorted((word[key](o), word[value](o)) for o in scene.objects)
        assert reply == ", ".join(f"{k} {v}" for k, v in expected) + "."
        unique = len({k for k, _ in expected}) == len(expected)
        assert record["lookup"] == ("values" if unique else None) and record["skill"] == value
        flags.add(record["lookup"])
    assert flags == {"values", None}


def test_answer_record_asks_one_short_answer_question_with_its_true_answer() -> None:
    rng = random.Random(1)
    kinds = set()
    for scene in _scenes(120):
        record = answer_record(scene, rng, list(ALL_PAIRS))
        question, answer = (t["value"] for t in record["conversations"])
        assert record["lookup"] == "answer" and question.startswith("<image>\n")
        assert question.endswith(SHORT_ANSWER_SUFFIX)
        asked = question.removeprefix("<image>\n").removesuffix(SHORT_ANSWER_SUFFIX)
        matches = [qa for kind in ("color_of_shape", "shape_of_color", "count_all", "count_shape", "count_color",
                                   "where", "size", "exists", "relation")
                   for qa in candidates(scene, kind, list(ALL_PAIRS)) if qa.question == asked]
        assert matches and all(qa.answer == answer for qa in matches), (asked, answer)
        kinds.add(matches[0].kind)
        assert record["skill"] == matches[0].kind
    assert len(kinds) == 9  # every question kind is drilled


def test_every_corpus_scene_has_one_answer_record() -> None:
    for scene in _scenes(5):
        ids = [r["id"] for r in corpus_scene_records(scene, seed=3)]
        assert sum(i.startswith("answer-") for i in ids) == 1 and sum(i.startswith("inventory-") for i in ids) == 1


def test_every_lesson_is_in_the_corpus_and_text_chats_are_answer_lessons() -> None:
    entries = list(corpus_records(seed=3, num_scenes=60, num_text_chats=5))
    assert {lesson(e) for e in entries} - {None} == set(LESSONS)
    text = [e for e in entries if "sheet" not in e]
    assert len(text) == 5 and {lesson(e) for e in text} == {"answer:text"}
