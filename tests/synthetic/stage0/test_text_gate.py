"""The stage-0 text gate: the VLM's own prompt with the sheet's cells at the image tokens, scored per question kind."""
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conversation.records import Message
from conversation.tokenize import encode_prompt
from synthetic.questions import QUESTION_KINDS, SHORT_ANSWER_SUFFIX
from synthetic.sheet import NO_CELL
from synthetic.stage0.text_gate import gate_prompts, text_gate


def test_gate_prompt_is_the_vqa_prompt_with_the_cells_at_the_image_tokens(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    image_id = tok.convert_tokens_to_ids("<image>")
    kind, prompt, answer = gate_prompts(tok, seed=1, num_scenes=1)[0]
    assert kind in QUESTION_KINDS and answer
    text = tok.decode([i for i in prompt.input_ids if i != image_id])
    question = text.split("\n", 1)[1].removesuffix(" ASSISTANT:").removesuffix(SHORT_ANSWER_SUFFIX)
    vlm = encode_prompt([Message("user", f"<image>\n{question}{SHORT_ANSWER_SUFFIX}")], "vicuna_v1", tok,
                        image_token_id=image_id, num_image_tokens=9)
    assert prompt.input_ids == vlm  # exactly the VLM's prompt, nine image tokens included
    cells = [c for c, i in zip(prompt.cell_ids, prompt.input_ids) if i == image_id]
    assert len(cells) == 9 and all(c != [NO_CELL] * 5 for c in cells)
    assert [c for c, i in zip(prompt.cell_ids, prompt.input_ids) if i != image_id] == [[NO_CELL] * 5] * (len(vlm) - 9)


def test_gate_scores_every_kind_and_an_untrained_model_fails_it(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=256,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    scores = text_gate(model, tok, seed=1, num_scenes=30)
    assert set(scores) == set(QUESTION_KINDS) | {"overall"}
    assert scores["overall"] < 10 and model.training  # nothing learned; the model's mode is restored
