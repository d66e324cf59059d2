"""The world's tokenizer: a standard HF tokenizer with the special tokens, a round trip, and the vicuna chat template."""
from pathlib import Path

from transformers import AutoTokenizer

from conversation.records import parse_record
from conversation.records import Message
from conversation.templates import render_text
from synthetic.tokenizer import train_tokenizer

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def test_loads_with_autotokenizer_and_round_trips(synth_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(synth_world / "tokenizer"))
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>", "<image>")}
    assert ids == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4}
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    text = "USER: <image>\nWhere is the red circle?\nAnswer the question using a single word or phrase. ASSISTANT: top left</s>"
    encoded = tok(text).input_ids
    assert encoded[0] == 1 and encoded.count(4) == 1 and encoded[-1] == 2
    assert tok.decode(encoded) == "<s>" + text
    assert tok.decode(tok("Zebra café 42!", add_special_tokens=False).input_ids) == "Zebra café 42!"  # byte-level: no <unk>
    assert len(tok("Where is the red circle?", add_special_tokens=False).input_ids) <= 8  # BPE learned the world's words


def test_chat_template_renders_vicuna_v1(synth_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(synth_world / "tokenizer"))
    messages = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "What is 1 plus 1?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == f"<s>{SYSTEM} USER: What is 2 plus 3? ASSISTANT: 5</s>USER: What is 1 plus 1? ASSISTANT:"
    ours = render_text([Message(m["role"], m["content"]) for m in messages], "vicuna_v1", tok, generation=True)
    assert rendered == ours  # the world's tokenizer renders exactly as the trainer's vicuna_v1 template
    custom = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *messages[:2]], tokenize=False)
    assert custom == "<s>Be brief. USER: What is 2 plus 3? ASSISTANT: 5</s>"


def test_vocab_size_is_respected() -> None:
    texts = [f"a {c} {s} at the top left" for c in ("red", "blue", "green") for s in ("circle", "star")] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    assert len(tok) <= 300 and tok.convert_tokens_to_ids("<image>") == 4


def test_every_llava_record_parses(synth_world: Path) -> None:
    import json

    for name in ("align.json", "instruct.json"):
        records = json.loads((synth_world / name).read_text())
        convs = [parse_record(r, i) for i, r in enumerate(records)]
        assert all(c.messages[0].role == "user" and c.messages[-1].role == "assistant" for c in convs)
        with_image = [c for c in convs if c.images]
        assert all(len(c.images) == 1 and (synth_world / "images" / c.images[0]).is_file() for c in with_image)
    assert any(not c.images for c in convs)  # text-only ShareGPT-style conversations in the instruct mix
