"""Tests for conversation.tokenize: image expansion, truncation rules, prompts for generation."""
from __future__ import annotations

import pytest

from conversation.errors import RecordError
from conversation.records import Conversation, Message, parse_record
from conversation.templates import Span, render_text
from conversation.tokenize import IGNORE_INDEX, encode_prompt, spans_to_ids, tokenize_conversation, truncate

K = 5


def conv_with_image(answer="the red square is on the left", turns=1):
    msgs = []
    for t in range(turns):
        msgs += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + "What is on the left?"},
                 {"from": "gpt", "value": answer}]
    return parse_record({"id": "c1", "image": "a.png", "conversations": msgs}, 0)


def image_id(tok):
    return tok.convert_tokens_to_ids("<image>")


def test_ids_are_per_span_tokenizations_concatenated(bpe_tokenizer):
    tok = bpe_tokenizer
    spans = [Span(token="bos"), Span("USER: <image>\nhi ASSISTANT:"), Span(" yes", True), Span(token="eos", supervised=True)]
    ids, labels, starts = spans_to_ids(spans, tok, image_token_id=image_id(tok), num_image_tokens=K, record_id="x")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    expected = [tok.bos_token_id, *enc("USER: "), *[image_id(tok)] * K, *enc("\nhi ASSISTANT:"), *enc(" yes"), tok.eos_token_id]
    assert ids == expected
    n_prompt = len(expected) - len(enc(" yes")) - 1
    assert labels == [IGNORE_INDEX] * n_prompt + enc(" yes") + [tok.eos_token_id]
    assert starts == [1 + len(enc("USER: "))]


def test_encode_prompt_ends_with_assistant_prefix(tokenizer):
    msgs = [Message("user", "<image>\nWhat color?")]
    ids = encode_prompt(msgs, "vicuna_v1", tokenizer, image_token_id=image_id(tokenizer), num_image_tokens=K)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(image_id(tokenizer)) == K
    text = tokenizer.decode([i for i in ids if i != image_id(tokenizer)], skip_special_tokens=True)
    assert text.rstrip().endswith("ASSISTANT:")
    # the prompt is a prefix of the training ids of the same conversation answered
    conv = Conversation("p", [*msgs, Message("assistant", "red")], ["a.png"])
    full = tokenize_conversation(conv, "vicuna_v1", tokenizer, image_token_id=image_id(tokenizer), num_image_tokens=K)
    assert full.input_ids[: len(ids)] == ids


def test_encode_prompt_requires_a_user_turn_last(bpe_tokenizer):
    with pytest.raises(ValueError, match="end with a user message"):
        encode_prompt([Message("user", "a"), Message("assistant", "b")], "chatml", bpe_tokenizer, image_token_id=1, num_image_tokens=1)


def test_truncation_keeps_image_blocks_and_supervision(bpe_tokenizer):
    tok = bpe_tokenizer
    conv = conv_with_image(turns=3)
    full = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K)
    cut = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K, max_length=len(full.input_ids) - 7)
    assert cut.input_ids == full.input_ids[: len(full.input_ids) - 7]
    assert cut.labels == full.labels[: len(cut.labels)]
    assert cut.input_ids.count(image_id(tok)) == K


def test_images_that_do_not_fit_are_an_error(bpe_tokenizer):
    tok = bpe_tokenizer
    conv = conv_with_image()
    full = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K)
    block_end = max(i for i, t in enumerate(full.input_ids) if t == image_id(tok)) + 1
    with pytest.raises(RecordError) as info:
        tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K, max_length=block_end - 2)
    assert (info.value.record_id, info.value.reason) == ("c1", "images do not fit in max_length")
    ok = tokenize_conversation(conv, "plain", tok, image_token_id=image_id(tok), num_image_tokens=K, max_length=1 + K + 1)
    assert ok.input_ids.count(image_id(tok)) == K and ok.labels[-1] != IGNORE_INDEX


def test_truncation_that_leaves_no_supervised_token_is_an_error(bpe_tokenizer):
    tok = bpe_tokenizer
    conv = conv_with_image()
    full = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K)
    first_sup = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    with pytest.raises(RecordError, match="no supervised token left"):
        tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K, max_length=first_sup)
    one = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=image_id(tok), num_image_tokens=K, max_length=first_sup + 1)
    assert sum(lab != IGNORE_INDEX for lab in one.labels) == 1


def test_truncate_never_returns_partial_image_block():
    ids = [1] + [9] * 4 + [2, 3]
    labels = [-100] * 5 + [2, 3]
    with pytest.raises(RecordError):
        truncate(ids, labels, [1], 4, 3, "r")
    assert truncate(ids, labels, [1], 4, 6, "r") == (ids[:6], labels[:6])


def test_image_count_mismatch_with_rendered_blocks_is_an_error(bpe_tokenizer):
    # plain keeps images of user turns; a record whose images were listed but dropped by a hand-built Conversation
    conv = Conversation("bad", [Message("user", "hello"), Message("assistant", "x")], ["a.png"])
    with pytest.raises(RecordError, match="0 image blocks rendered for 1 image"):
        tokenize_conversation(conv, "chatml", bpe_tokenizer, image_token_id=image_id(bpe_tokenizer), num_image_tokens=K)


def test_text_that_tokenizes_to_the_image_id_is_an_error(bpe_tokenizer):
    tok = bpe_tokenizer
    conv = Conversation("t", [Message("user", "hi"), Message("assistant", "red")], [])
    red = tok("red", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(RecordError, match="image token id"):
        tokenize_conversation(conv, "chatml", tok, image_token_id=red, num_image_tokens=K)


@pytest.mark.parametrize("text", ["use <s>old</s> price", "end<|im_end|>"])
def test_special_token_text_in_a_message_is_an_error(bpe_tokenizer, text):
    conv = Conversation("html", [Message("user", "hi"), Message("assistant", text)], [])
    with pytest.raises(RecordError, match="turn 1: text contains the special token"):
        tokenize_conversation(conv, "vicuna_v1", bpe_tokenizer, image_token_id=image_id(bpe_tokenizer), num_image_tokens=K)


def test_llava_alignment_record_with_plain(unigram_tokenizer):
    tok = unigram_tokenizer
    conv = parse_record({"id": "a", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "Describe the image briefly.\n<image>"}, {"from": "gpt", "value": "a red circle"}]}, 0)
    assert render_text(conv.messages, "plain", tok) == "<s><image>a red circle\n"
    s = tokenize_conversation(conv, "plain", tok, image_token_id=image_id(tok), num_image_tokens=K)
    assert s.input_ids[: 1 + K] == [tok.bos_token_id] + [image_id(tok)] * K
    assert s.labels[: 1 + K] == [IGNORE_INDEX] * (1 + K)
    assert all(lab != IGNORE_INDEX for lab in s.labels[1 + K:])


def test_prepending_sentencepiece_tokenizer_gets_no_double_space():
    """A Llama-2-legacy style tokenizer (normalizer prepends '▁') must tokenize ' red' in a reply as '▁red'."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁", -2.0), ("▁red", -1.0), ("▁USER:", -1.0),
             ("▁ASSISTANT:", -1.0), ("▁hi", -1.0), ("▁A", -1.0)] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyzUSERA:.,'\n"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_ids_to_tokens(fast(" red", add_special_tokens=False)["input_ids"]) == ["▁", "▁red"]
    conv = Conversation("s", [Message("user", "hi"), Message("assistant", "red")], [])
    sample = tokenize_conversation(conv, "vicuna_v1", fast, image_token_id=image_id(fast), num_image_tokens=K)
    sup = [t for t, lab in zip(sample.input_ids, sample.labels) if lab != IGNORE_INDEX]
    assert fast.convert_ids_to_tokens(sup) == ["▁red", "</s>"]


def two_image_conv():
    msgs = [{"from": "human", "value": "<image>\nand\n<image>\nWhich is bigger?"}, {"from": "gpt", "value": "the first"}]
    return parse_record({"id": "two", "image": ["a.png", "b.png"], "conversations": msgs}, 0)


def test_per_image_counts_expand_each_image_to_its_own_count(bpe_tokenizer):
    tok, img = bpe_tokenizer, image_id(bpe_tokenizer)
    conv = two_image_conv()
    out = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=img, num_image_tokens=[7, 3])
    same = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=img, num_image_tokens=5)
    assert out.input_ids.count(img) == 10 and len(out.input_ids) == len(same.input_ids)
    first = out.input_ids.index(img)
    assert out.input_ids[first:first + 7] == [img] * 7 and out.input_ids[first + 7] != img
    assert [t for t in out.input_ids if t != img] == [t for t in same.input_ids if t != img]
    with pytest.raises(RecordError, match="1 image token count"):
        tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=img, num_image_tokens=[7])


def test_truncation_checks_the_last_images_own_count(bpe_tokenizer):
    tok, img = bpe_tokenizer, image_id(bpe_tokenizer)
    conv = two_image_conv()
    full = tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=img, num_image_tokens=[2, 9])
    block_end = max(i for i, t in enumerate(full.input_ids) if t == img) + 1
    with pytest.raises(RecordError, match="images do not fit"):
        tokenize_conversation(conv, "vicuna_v1", tok, image_token_id=img, num_image_tokens=[2, 9], max_length=block_end - 1)
