"""The language-pretraining corpus: the VLM's own kinds of records about scenes written as sheets, as JSONL.

Every scene record is one the VLM data has (an alignment caption, a caption chat, a multi-turn VQA chat, a
detailed description, a multiple-choice chat) or an inventory (below), with a `sheet` (`synthetic.sheet`)
standing in for the image and the `template` it is rendered with: stage 0 tokenizes it through the VLM's own
template and tokenizer, so the LLM learns, from text, exactly the skills the image questions need, in the prompt
layout it will meet them in.
Corpus scenes are drawn from every colour-shape pair, as a real LLM's text mentions red stars although no
training image shows one.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from conversation.records import IMAGE_TOKEN, Message
from conversation.templates import render_text
from synthetic.llava_records import (align_record, caption_record, detail_record, long_answer, mcq_record, text_record,
                                     vqa_record)
from synthetic.questions import QUESTION_KINDS, SHORT_ANSWER_SUFFIX, sample_questions
from synthetic.sheet import scene_sheet
from synthetic.world import ALL_PAIRS, Scene, sample_scene, scene_rng

CORPUS_FILE = "text_corpus.jsonl"
CORPUS_SPLIT = "corpus"  # scenes of their own: never a training or test image


TEXT_SKILL = "text"  # the skill of a text-only chat: its answers come from the question, not from a sheet
# Stage 0's warm-up lessons, in the order taught (`lookup:skill`; `lookup` says what is supervised: an inventory's
# values or a chat's answers): inventories by the value they list, one-question chats by question kind, text-only chats.
LESSONS = (*(f"values:{v}" for v in ("size", "color", "shape", "position")),
           *(f"answer:{kind}" for kind in QUESTION_KINDS), f"answer:{TEXT_SKILL}")


def _entry(record: dict, template: str, sheet: str | None) -> dict:
    entry = {"id": record["id"], "template": template, "conversations": record["conversations"]}
    if record.get("lookup"):  # a record for stage 0's lookup warm-up (`synthetic.stage0.llm`): what it supervises
        entry["lookup"], entry["skill"] = record["lookup"], record["skill"]
    return {**entry, "sheet": sheet} if sheet is not None else entry


def lesson(entry: dict) -> str | None:
    """The warm-up lesson a corpus entry belongs to (one of `LESSONS`), or None."""
    return f"{entry['lookup']}:{entry['skill']}" if entry.get("lookup") else None


def drill_record(scene: Scene, rng: random.Random, absent: list[tuple[str, str]], sentence_share: float = 0.5) -> dict:
    """A VQA chat asking one question of every kind the scene allows: the answers are the skill the LLM must bring
    to phase 2, so they should be a large share of what it is trained on.

    About half are answered in a sentence that names the object first (`The circle is green.`): there the word to
    look up sits right before the answer, so the model can learn to find an object's attributes in the sheet
    before it must also carry the question's noun across the short-answer instruction (measured: with short
    answers alone a 4-layer model stayed at chance on colour and shape questions for 1,500 steps).
    """
    qas = sample_questions(scene, rng, len(QUESTION_KINDS), absent)
    turns = []
    for i, qa in enumerate(qas):
        sentence = rng.random() < sentence_share
        prompt = qa.question if sentence else qa.question + SHORT_ANSWER_SUFFIX
        turns += [{"from": "human", "value": f"<image>\n{prompt}" if i == 0 else prompt},
                  {"from": "gpt", "value": long_answer(qa) if sentence else qa.answer}]
    return {"id": f"drill-{scene.id:06d}", "conversations": turns}


INVENTORY_KEYS = ("shape", "color")
INVENTORY_VALUES = ("color", "shape", "size", "position")


def inventory_record(scene: Scene, rng: random.Random) -> dict:
    """Every object named by one attribute and followed by another, sorted (`circle red, star green, star red.`).

    Each value sits right after the word it is looked up by, so this teaches the one-step lookup (find the cell
    holding a word, read another of its words) on its own; the questions then only add carrying the question's
    noun to the answer. The order is alphabetical, not random: a next word the model cannot know is noise on every
    step (measured: listing in random order, a 4-layer model was still at chance on the values after 300 steps of
    64 records; sorted, or with the loss on the values only, it read them right 99 % of the time by step 200).
    """
    key = rng.choice(INVENTORY_KEYS)
    value = rng.choice([v for v in INVENTORY_VALUES if v != key])
    words = {"shape": lambda o: o.shape, "color": lambda o: o.colour, "size": lambda o: o.size,
             "position": lambda o: o.position}
    pairs = sorted((words[key](o), words[value](o)) for o in scene.objects)
    prompt = f"<image>\nList every object by its {key}, each followed by its {value}."
    keys = [k for k, _ in pairs]
    lookup = "values" if len(set(keys)) == len(keys) else None  # with a repeated key the value is ambiguous
    return {"id": f"inventory-{scene.id:06d}", "lookup": lookup, "skill": value, "conversations": [
        {"from": "human", "value": prompt}, {"from": "gpt", "value": ", ".join(f"{k} {v}" for k, v in pairs) + "."}]}


def answer_record(scene: Scene, rng: random.Random, absent: list[tuple[str, str]]) -> dict:
    """One short-answer question, its kind drawn at random: stage 0's warm-up trains on the answer alone, so every
    question kind (existence, counting, size, relations: lookups the inventories do not teach) is learnt as a
    lookup before the corpus's longer replies compete for the model's attention."""
    qa = sample_questions(scene, rng, 1, absent)[0]
    return {"id": f"answer-{scene.id:06d}", "lookup": "answer", "skill": qa.kind, "conversations": [
        {"from": "human", "value": f"<image>\n{qa.question}{SHORT_ANSWER_SUFFIX}"},
        {"from": "gpt", "value": qa.answer}]}


def corpus_scene_records(scene: Scene, seed: int) -> Iterator[dict]:
    """One corpus scene's records: its plain caption, a VQA chat, a drill, an inventory, a one-question chat, and
    sometimes a caption chat, a description or an MCQ chat."""
    rng = scene_rng(seed, scene.split, scene.id, "corpus")
    sheet = scene_sheet(scene)
    absent = list(ALL_PAIRS)
    yield _entry(align_record(scene, rng), "plain", sheet)
    yield _entry(vqa_record(scene, rng, absent), "vicuna_v1", sheet)
    yield _entry(drill_record(scene, rng, absent), "vicuna_v1", sheet)
    yield _entry(inventory_record(scene, rng), "vicuna_v1", sheet)
    yield _entry(answer_record(scene, rng, absent), "vicuna_v1", sheet)
    if rng.random() < 0.25:
        yield _entry(caption_record(scene, rng), "vicuna_v1", sheet)
    if rng.random() < 0.25:
        yield _entry(detail_record(scene, rng), "vicuna_v1", sheet)
    if rng.random() < 0.25 and (mcq := mcq_record(scene, rng, absent)) is not None:
        yield _entry(mcq, "vicuna_v1", sheet)


def corpus_records(seed: int, num_scenes: int, num_text_chats: int) -> Iterator[dict]:
    """`num_scenes` corpus scenes' records, then `num_text_chats` text-only chats (numbers, facts)."""
    for index in range(num_scenes):
        yield from corpus_scene_records(sample_scene(seed, CORPUS_SPLIT, index, held_out_share=0.0), seed)
    for index in range(num_text_chats):
        chat = text_record(index, scene_rng(seed, CORPUS_SPLIT, index, "text"))
        yield _entry({**chat, "lookup": "answer", "skill": TEXT_SKILL}, "vicuna_v1", None)


def record_texts(entry: dict) -> Iterator[str]:
    """The text of a corpus record as its template renders it, system prompt and role markers included (for
    training the tokenizer: they are in every prompt, so they should be few tokens)."""
    turns = entry["conversations"]
    # Not through `parse_record`: it normalizes where images sit, and the tokenizer was trained on the text as stored.
    roles = {"human": "user", "gpt": "assistant"}
    messages = [Message(roles[t["from"]], t["value"]) for t in turns]
    yield render_text(messages, entry["template"], None).replace(IMAGE_TOKEN, entry.get("sheet", ""))


def read_corpus(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
