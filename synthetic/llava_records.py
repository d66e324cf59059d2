"""LLaVA-format records for the world: alignment captions, the instruction mix (VQA, detail, MCQ) and text-only chats."""
from __future__ import annotations

import random

from eval.items import CAPTION_PROMPT
from synthetic.questions import QA, SHORT_ANSWER_SUFFIX, sample_questions
from synthetic.text import BRIEF_PROMPTS, DETAIL_PROMPTS, brief_caption, detailed_description
from synthetic.textonly import sample_fact
from synthetic.world import COLOUR_NAMES, SHAPES, Scene, position_phrase

MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCD"
MCQ_KINDS: tuple[str, ...] = ("color_of_shape", "shape_of_color", "count_all", "where", "size")


def _turns(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for human, gpt in pairs:
        out.append({"from": "human", "value": human})
        out.append({"from": "gpt", "value": gpt})
    return out


def _with_image(prompt: str, rng: random.Random) -> str:
    return f"<image>\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n<image>"


def align_record(scene: Scene, rng: random.Random) -> dict:
    """One alignment pair: a varied brief-description prompt (image token before or after) and a brief caption."""
    prompt = _with_image(rng.choice(BRIEF_PROMPTS), rng)
    return {"id": f"align-{scene.id:06d}", "image": scene.image,
            "conversations": _turns([(prompt, brief_caption(scene, rng))])}


def caption_record(scene: Scene, rng: random.Random) -> dict:
    """A one-sentence caption chat, as LLaVA-1.5's mix has them (TextCaps, asked with the captioning benchmark's
    prompt): without them the instruction-tuned model answers a caption request like a question."""
    return {"id": f"caption-{scene.id:06d}", "image": scene.image,
            "conversations": _turns([(f"<image>\n{CAPTION_PROMPT}", brief_caption(scene, rng))])}


def long_answer(qa: QA) -> str:
    """A full-sentence answer for chat-style turns (no short-answer suffix)."""
    subject = qa.question.rstrip("?")
    if qa.kind == "exists":
        return "Yes, there is." if qa.answer == "yes" else "No, there is not."
    if qa.answer_type == "yes/no":
        return "Yes, it is." if qa.answer == "yes" else "No, it is not."
    if qa.kind == "color_of_shape":
        return f"The {subject.split(' the ')[-1]} is {qa.answer}."
    if qa.kind == "shape_of_color":
        return f"The {subject.split(' the ')[-1]} is a {qa.answer}."
    if qa.kind == "where":
        target = subject.split(" the ")[-1]
        return f"The {target} is in the center." if qa.answer == "center" else f"The {target} is at the {qa.answer}."
    if qa.kind == "size":
        return f"It is {qa.answer}."
    return f"There {'is' if qa.answer == '1' else 'are'} {qa.answer}."


def vqa_record(scene: Scene, rng: random.Random, absent_pairs: list[tuple[str, str]], chat_share: float = 0.15) -> dict:
    """Multi-turn VQA over one image; most turns carry LLaVA's short-answer suffix, a few are answered in a sentence."""
    qas = sample_questions(scene, rng, rng.randint(3, 6), absent_pairs)
    pairs = []
    for i, qa in enumerate(qas):
        chat = rng.random() < chat_share
        prompt = qa.question if chat else qa.question + SHORT_ANSWER_SUFFIX
        if i == 0:
            prompt = f"<image>\n{prompt}"
        pairs.append((prompt, long_answer(qa) if chat else qa.answer))
    return {"id": f"vqa-{scene.id:06d}", "image": scene.image, "conversations": _turns(pairs)}


def detail_record(scene: Scene, rng: random.Random) -> dict:
    prompt = _with_image(rng.choice(DETAIL_PROMPTS), rng)
    return {"id": f"detail-{scene.id:06d}", "image": scene.image,
            "conversations": _turns([(prompt, detailed_description(scene))])}


def option_space(qa: QA) -> list[str]:
    if qa.kind == "color_of_shape":
        return list(COLOUR_NAMES)
    if qa.kind == "shape_of_color":
        return list(SHAPES)
    if qa.kind == "count_all":
        return ["1", "2", "3", "4"]
    if qa.kind == "where":
        return [position_phrase(r, c) for r in range(3) for c in range(3)]
    if qa.kind == "size":
        return ["small", "large"]
    raise ValueError(f"question kind {qa.kind!r} has no option space for multiple choice")


def multiple_choice(qa: QA, rng: random.Random) -> tuple[list[str], int]:
    """Choices (the answer plus up to three distractors) in random order, and the answer's index."""
    distractors = [o for o in option_space(qa) if o != qa.answer]
    choices = rng.sample(distractors, min(3, len(distractors))) + [qa.answer]
    rng.shuffle(choices)
    return choices, choices.index(qa.answer)


def mcq_prompt(question: str, choices: list[str]) -> str:
    lines = [question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + MCQ_SUFFIX


def mcq_record(scene: Scene, rng: random.Random, absent_pairs: list[tuple[str, str]]) -> dict | None:
    qas = sample_questions(scene, rng, rng.randint(1, 2), absent_pairs, kinds=MCQ_KINDS)
    pairs = []
    for i, qa in enumerate(qas):
        choices, answer = multiple_choice(qa, rng)
        prompt = mcq_prompt(qa.question, choices)
        pairs.append((f"<image>\n{prompt}" if i == 0 else prompt, LETTERS[answer]))
    if not pairs:
        return None
    return {"id": f"mcq-{scene.id:06d}", "image": scene.image, "conversations": _turns(pairs)}


def text_record(index: int, rng: random.Random) -> dict:
    """A ShareGPT-style text-only conversation (no `image` key) of one to three world-knowledge turns."""
    pairs = []
    for _ in range(rng.randint(1, 3)):
        fact = sample_fact(rng)
        if rng.random() < 0.5:
            pairs.append((fact.question + SHORT_ANSWER_SUFFIX, fact.answer))
        else:
            pairs.append((fact.question, fact.sentence))
    return {"id": f"text-{index:06d}", "conversations": _turns(pairs)}
