"""The stage-0 LLM's gate: short-answer questions about unseen scenes given as sheets, scored per question kind.

The questions are the VQA files' own templates, asked in the exact prompt the VLM will see, the image tokens
replaced by the scene's nine cell tokens (`synthetic.sheet`); the answer is read by greedy decoding and must equal
the canonical answer.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from synthetic.questions import QUESTION_KINDS, SHORT_ANSWER_SUFFIX, sample_questions
from synthetic.sheet import NO_CELL, WORDS_PER_CELL, SheetRecord, record_ids, scene_sheet, sheet_embeddings
from synthetic.world import ALL_PAIRS, sample_scene, scene_rng

GATE_SPLIT = "gate"  # scenes used nowhere else


def gate_prompts(tokenizer: PreTrainedTokenizerBase, seed: int, num_scenes: int,
                 per_scene: int = 3) -> list[tuple[str, SheetRecord, str]]:
    """(kind, prompt, answer) for `num_scenes` fresh scenes, `per_scene` questions of distinct kinds each; the
    prompt is the VLM's vicuna_v1 generation prompt for `<image>\\nQUESTION` with the sheet for the image."""
    items = []
    for index in range(num_scenes):
        scene = sample_scene(seed, GATE_SPLIT, index, held_out_share=0.0)
        rng = scene_rng(seed, GATE_SPLIT, index, "questions")
        for qa in sample_questions(scene, rng, per_scene, list(ALL_PAIRS)):
            record = {"id": f"gate-{index}", "conversations": [
                {"from": "human", "value": f"<image>\n{qa.question}{SHORT_ANSWER_SUFFIX}"}]}
            prompt = record_ids(record, tokenizer, "vicuna_v1", scene_sheet(scene), generation=True)
            items.append((qa.kind, prompt, qa.answer))
    return items


@torch.no_grad()
def text_gate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int = 1, num_scenes: int = 300,
              batch_size: int = 64, max_new_tokens: int = 4) -> dict[str, float]:
    """Exact-match accuracy (percent) per question kind and overall, greedy, left-padded batches."""
    items = gate_prompts(tokenizer, seed, num_scenes)
    was_training = model.training
    model.eval()
    hits: dict[str, list[bool]] = defaultdict(list)
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start: start + batch_size]
            pads = [max(len(p.input_ids) for _, p, _ in chunk) - len(p.input_ids) for _, p, _ in chunk]
            ids = torch.tensor([[tokenizer.pad_token_id] * n + p.input_ids for (_, p, _), n in zip(chunk, pads)])
            cells = torch.tensor([[[NO_CELL] * WORDS_PER_CELL] * n + p.cell_ids for (_, p, _), n in zip(chunk, pads)])
            mask = torch.tensor([[0] * n + [1] * len(p.input_ids) for (_, p, _), n in zip(chunk, pads)])
            embeds = sheet_embeddings(model.get_input_embeddings(), ids, cells)
            # From embeddings, `generate` returns the new tokens only.
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            replies = tokenizer.batch_decode(out, skip_special_tokens=True)
            for (kind, _, answer), reply in zip(chunk, replies):
                hits[kind].append(reply.strip() == answer)
    finally:
        model.train(was_training)
    scores = {kind: 100.0 * sum(hits[kind]) / len(hits[kind]) for kind in QUESTION_KINDS if hits[kind]}
    scores["overall"] = 100.0 * sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return scores
