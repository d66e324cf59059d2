"""Tests for conversation.templates: exact renderings, label properties for every template x tokenizer kind."""
from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversation.errors import RecordError
from conversation.records import Message, parse_record
from conversation.templates import (
    TEMPLATES,
    VICUNA_SYSTEM,
    Template,
    chat_template_jinja,
    export_chat_template,
    get_template,
    render_spans,
    render_text,
    stop_token_ids,
)
from conversation.tokenize import IGNORE_INDEX, tokenize_conversation

K = 4
WORDS = ["the", "cat", "red", "square", "is", "on", "left", "two", "yes", "no", "What", "color", "circle", "Describe"]
# What closes each supervised reply, in rendered text (the `tokenizer` kind uses the chatml jinja below).
REPLY_TEXT = {
    "plain": lambda a: f"{a}\n",
    "vicuna_v1": lambda a: f" {a}</s>",
    "llama_2": lambda a: f" {a} </s>",
    "chatml": lambda a: f"{a}<|im_end|>",
    "llama_3": lambda a: f"{a}<|eot_id|>",
    "tokenizer": lambda a: f"{a}<|im_end|>",
}


def test_vicuna_v1_renders_llava_15_exact_string(bpe_tokenizer):
    raw = {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    }
    conv = parse_record(raw, 0)
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat are the colors of the bus in "
        "the image? ASSISTANT: The bus in the image is white and red.</s>USER: What feature can be seen on the "
        "back of the bus? ASSISTANT: The back of the bus features an advertisement.</s>"
    )
    assert render_text(conv.messages, "vicuna_v1", bpe_tokenizer) == "<s>" + expected
    prompt = render_text(conv.messages[:1], "vicuna_v1", bpe_tokenizer, generation=True)
    assert prompt == "<s>" + VICUNA_SYSTEM + " USER: <image>\nWhat are the colors of the bus in the image? ASSISTANT:"


def test_plain_drops_the_prompt_text(bpe_tokenizer):
    conv = parse_record({"id": "p", "image": "a.png", "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": "a red circle"}]}, 0)
    assert render_text(conv.messages, "plain", bpe_tokenizer) == "<s><image>a red circle\n"


def test_other_templates_exact_text(bpe_tokenizer):
    msgs = [Message("user", "<image>\nq1"), Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2")]
    assert render_text(msgs, "chatml", bpe_tokenizer) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\na2<|im_end|>\n"
    )
    assert render_text([Message("system", "S"), *msgs[:2]], "llama_2", bpe_tokenizer) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n<image>\nq1 [/INST] a1 </s>"
    )
    assert render_text(msgs, "llama_2", bpe_tokenizer).endswith("a1 </s><s>[INST] q2 [/INST] a2 </s>")
    assert render_text(msgs[:3], "llama_3", bpe_tokenizer, generation=True) == (
        "<s><|start_header_id|>user<|end_header_id|>\n\n<image>\nq1<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\na1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nq2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_unknown_template_lists_known_names():
    with pytest.raises(ValueError, match="known: \\['chatml'"):
        get_template("vicuna")  # exact names only, no substring guessing


# Every registered template except the tokenizer's own: a template added without its Jinja fails here.
JINJA_TEMPLATES = sorted(n for n, t in TEMPLATES.items() if not t.tokenizer_chat_template)


def assert_jinja_renders_the_same_text(name, tokenizer):
    msgs = [Message("system", "Be kind."), Message("user", "<image>\nq1"), Message("assistant", "a1"),
            Message("user", "q2"), Message("assistant", "a2")]
    for view in (msgs, msgs[1:]):
        as_dicts = [{"role": m.role, "content": m.content} for m in view]
        hf = tokenizer.apply_chat_template(as_dicts, chat_template=chat_template_jinja(name), tokenize=False)
        assert hf == render_text(view, name, tokenizer)


def test_every_template_but_the_tokenizers_own_is_checked():
    assert JINJA_TEMPLATES == ["chatml", "llama_2", "llama_3", "plain", "vicuna_v1"]
    assert export_chat_template("tokenizer") is None
    assert export_chat_template("chatml") == chat_template_jinja("chatml")
    folder = resources.files("conversation").joinpath("chat_templates")
    shipped = {p.name.removesuffix(".jinja") for p in folder.iterdir() if p.name.endswith(".jinja")}
    assert shipped == set(JINJA_TEMPLATES)  # no Jinja file without its registered template either


@pytest.mark.parametrize("name", JINJA_TEMPLATES)
def test_jinja_export_renders_the_same_text(name, tokenizer):
    assert_jinja_renders_the_same_text(name, tokenizer)


def test_a_template_registered_without_jinja_fails_the_parity_check(tokenizer, monkeypatch):
    monkeypatch.setitem(TEMPLATES, "new_chat", Template("new_chat", TEMPLATES["chatml"].render, "<|im_end|>"))
    assert "new_chat" in sorted(n for n, t in TEMPLATES.items() if not t.tokenizer_chat_template)
    with pytest.raises(FileNotFoundError, match="template 'new_chat' has no conversation/chat_templates/new_chat.jinja"):
        assert_jinja_renders_the_same_text("new_chat", tokenizer)


def test_a_jinja_that_renders_differently_fails_the_parity_check(tokenizer, monkeypatch):
    monkeypatch.setitem(TEMPLATES, "chatml", Template("chatml", TEMPLATES["vicuna_v1"].render, None))
    with pytest.raises(AssertionError):
        assert_jinja_renders_the_same_text("chatml", tokenizer)


def test_stop_token_ids(bpe_tokenizer):
    tok = bpe_tokenizer
    eos = tok.eos_token_id
    assert stop_token_ids("vicuna_v1", tok) == [eos]
    assert stop_token_ids("chatml", tok) == [eos, tok.convert_tokens_to_ids("<|im_end|>")]
    assert stop_token_ids("llama_3", tok) == [eos, tok.convert_tokens_to_ids("<|eot_id|>")]


def _tokenizer_kind_copy(tokenizer, template: str):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_tokenizer_template_matches_chatml(tokenizer):
    tok = _tokenizer_kind_copy(tokenizer, chat_template_jinja("chatml"))
    msgs = [Message("user", "<image>\nq1"), Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2")]
    assert render_text(msgs, "tokenizer", tok) == render_text(msgs, "chatml", tok)
    assert render_text(msgs[:3], "tokenizer", tok, generation=True) == render_text(msgs[:3], "chatml", tok, generation=True)
    assert stop_token_ids("tokenizer", tok) == stop_token_ids("chatml", tok)


def test_tokenizer_template_with_the_synthetic_worlds_vicuna_template(tokenizer):
    from synthetic.tokenizer import VICUNA_CHAT_TEMPLATE

    tok = _tokenizer_kind_copy(tokenizer, VICUNA_CHAT_TEMPLATE)
    msgs = [Message("user", "<image>\nq1"), Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2")]
    assert render_text(msgs, "tokenizer", tok) == render_text(msgs, "vicuna_v1", tok)
    conv = parse_record({"id": "v", "image": "a.png", "conversations": [
        {"from": "human" if m.role == "user" else "gpt", "value": m.content} for m in msgs]}, 0)
    image_id = tok.convert_tokens_to_ids("<image>")
    ours = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id, num_image_tokens=K)
    theirs = tokenize_conversation(conv, "tokenizer", tok, image_token_id=image_id, num_image_tokens=K)
    supervised = lambda s: [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX]  # noqa: E731
    assert supervised(theirs) == supervised(ours)


def test_tokenizer_template_not_prefix_stable_names_the_record(bpe_tokenizer):
    unstable = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = _tokenizer_kind_copy(bpe_tokenizer, unstable)
    conv = parse_record({"id": "rec-9", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, 0)
    with pytest.raises(RecordError, match="rec-9.*not prefix-stable"):
        tokenize_conversation(conv, "tokenizer", tok, image_token_id=5, num_image_tokens=2)


# ---------------------------------------------------------------- property tests

sentence = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@st.composite
def conversations(draw):
    turns = draw(st.integers(1, 3))
    n_images = draw(st.integers(0, 2))
    users = [draw(sentence) + draw(st.sampled_from(["?", ".", ""])) for _ in range(turns)]
    replies = [draw(sentence) + draw(st.sampled_from([".", "", "\nyes"])) for _ in range(turns)]
    for _ in range(n_images):
        t = draw(st.integers(0, turns - 1))
        pos = draw(st.sampled_from(["start", "end", "middle"]))
        users[t] = {"start": f"<image>\n{users[t]}", "end": f"{users[t]}\n<image>", "middle": f"{users[t]} <image> ok"}[pos]
    conv = []
    if draw(st.booleans()):
        conv.append({"from": "system", "value": draw(sentence)})
    for u, a in zip(users, replies):
        conv += [{"from": "human", "value": u}, {"from": "gpt", "value": a}]
    raw = {"id": "h", "conversations": conv}
    if n_images:
        raw["image"] = [f"{i}.png" for i in range(n_images)] if n_images > 1 else "0.png"
    return parse_record(raw, 0)


def _normalize(text: str) -> str:
    return "".join(text.split())  # SentencePiece-style decoding moves spaces at span starts


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations())
def test_supervised_positions_are_exactly_the_replies(name, tokenizer, conv):
    tok = _tokenizer_kind_copy(tokenizer, chat_template_jinja("chatml")) if name == "tokenizer" else tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    sample = tokenize_conversation(conv, name, tok, image_token_id=image_id, num_image_tokens=K)
    ids, labels = sample.input_ids, sample.labels
    assert len(ids) == len(labels)
    supervised = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in supervised)
    replies = [m.content for m in conv.messages if m.role == "assistant"]
    expected = "".join(REPLY_TEXT[name](a) for a in replies)
    def decode(positions):
        return tok.decode([ids[i] for i in positions], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    runs = [[supervised[0]]]
    for i in supervised[1:]:
        (runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i]))
    if "bpe" in tok.backend_tokenizer.model.__class__.__name__.lower():
        assert decode(supervised) == expected  # byte-level BPE decodes exactly
    elif name == "plain":  # replies may be adjacent (one run); Metaspace adds a space at each span start
        assert _normalize(decode(supervised)) == _normalize(expected)
    else:
        assert [_normalize(decode(r)) for r in runs] == [_normalize(REPLY_TEXT[name](a)) for a in replies]
    # every reply ends with the template's end-of-turn id, which is supervised
    if name != "plain":
        assert len(runs) == len(replies)
        stops = set(stop_token_ids(name, tok))
        assert all(ids[run[-1]] in stops for run in runs)
    # image blocks: exactly K ids each, none supervised, one block per image
    positions = [i for i, t in enumerate(ids) if t == image_id]
    assert len(positions) == K * len(conv.images) == K * sample.num_images
    blocks = [positions[j:j + K] for j in range(0, len(positions), K)]
    assert all(b == list(range(b[0], b[0] + K)) for b in blocks)
    assert not set(positions) & set(supervised)
    # the ids are the per-span tokenizations concatenated (nothing re-tokenized across spans)
    spans = render_spans(conv.messages, name, tok)
    assert sum(s.supervised for s in spans) >= len(replies)
