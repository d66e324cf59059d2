"""Conversation templates by exact name: each renders messages into spans marked supervised or not."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Literal, Sequence

from conversation.errors import RecordError
from conversation.records import Message

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
CHATML_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Span:
    """A piece of rendered text (with `<image>` placeholders) or a special token by role (`bos`/`eos`)."""

    text: str = ""
    supervised: bool = False
    token: Literal["bos", "eos"] | None = None


RenderFn = Callable[[Sequence[Message], Any, bool, str], list[Span]]


@dataclass(frozen=True)
class Template:
    """A named template: `render(messages, tokenizer, generation, record_id) -> spans`; `end` closes a reply.

    Every template but the tokenizer's own ships `chat_templates/<name>.jinja`, the same rendering for HF
    `apply_chat_template` (an exported processor carries it); a test renders both for every registered name.
    """

    name: str
    render: RenderFn
    end: str | None  # text that ends a reply besides the eos token (None: eos only)
    tokenizer_chat_template: bool = False  # True: renders with the tokenizer's own chat_template (no Jinja of ours)


def _split_system(messages: Sequence[Message], default: str | None) -> tuple[str | None, list[Message]]:
    if messages and messages[0].role == "system":
        return messages[0].content, list(messages[1:])
    return default, list(messages)


class _Builder:
    """Accumulates unsupervised text so that adjacent prompt pieces form one span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.text = ""

    def flush(self) -> None:
        if self.text:
            self.spans.append(Span(self.text))
            self.text = ""

    def add(self, span: Span) -> None:
        self.flush()
        self.spans.append(span)

    def reply(self, text: str, eos: bool = False) -> None:
        """A supervised reply, closed (also supervised) by the eos token when `eos`."""
        self.add(Span(text, True))
        if eos:
            self.spans.append(Span(token="eos", supervised=True))

    def done(self) -> list[Span]:
        self.flush()
        return self.spans


def _plain(messages: Sequence[Message], tokenizer: Any, generation: bool, record_id: str) -> list[Span]:
    # Alignment: the user's words are dropped, only its images stay; caption + "\n" is supervised (LLaVA).
    b = _Builder()
    b.add(Span(token="bos"))
    for m in messages:
        if m.role == "user":
            b.text += "<image>" * m.content.count("<image>")
        elif m.role == "assistant":
            b.reply(m.content + "\n")
    return b.done()


def _vicuna_v1(messages: Sequence[Message], tokenizer: Any, generation: bool, record_id: str) -> list[Span]:
    system, body = _split_system(messages, VICUNA_SYSTEM)
    b = _Builder()
    b.add(Span(token="bos"))
    b.text = f"{system} "
    for m in body:
        if m.role == "user":
            b.text += f"USER: {m.content} ASSISTANT:"
        else:
            b.reply(f" {m.content}", eos=True)
    return b.done()


def _llama_2(messages: Sequence[Message], tokenizer: Any, generation: bool, record_id: str) -> list[Span]:
    system, body = _split_system(messages, LLAMA_2_SYSTEM)
    b = _Builder()
    for i, m in enumerate(body):
        if m.role == "user":
            b.add(Span(token="bos"))
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if i == 0 and system else ""
            b.text += f"[INST] {sys_block}{m.content} [/INST]"
        else:
            b.reply(f" {m.content} ", eos=True)
    return b.done()


def _chatml(messages: Sequence[Message], tokenizer: Any, generation: bool, record_id: str) -> list[Span]:
    system, body = _split_system(messages, CHATML_SYSTEM)
    b = _Builder()
    b.text = f"<|im_start|>system\n{system}<|im_end|>\n"
    for m in body:
        if m.role == "user":
            b.text += f"<|im_start|>user\n{m.content}<|im_end|>\n<|im_start|>assistant\n"
        else:
            b.reply(f"{m.content}<|im_end|>")
            b.text = "\n"
    return b.done()


def _llama_3(messages: Sequence[Message], tokenizer: Any, generation: bool, record_id: str) -> list[Span]:
    system, body = _split_system(messages, None)
    b = _Builder()
    b.add(Span(token="bos"))
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    if system is not None:
        b.text += header.format("system") + f"{system}<|eot_id|>"
    for m in body:
        if m.role == "user":
            b.text += header.format("user") + f"{m.content}<|eot_id|>" + header.format("assistant")
        else:
            b.reply(f"{m.content}<|eot_id|>")
    return b.done()


def _hf_render(tokenizer: Any, messages: Sequence[Message], generation: bool, record_id: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template")
    try:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=generation
        )
    except Exception as exc:  # jinja raise_exception() and friends: name the record instead of a bare trace
        raise RecordError(record_id, "template", f"tokenizer chat_template failed: {exc}") from exc


def _tokenizer_template(messages: Sequence[Message], tokenizer: Any, generation: bool, record_id: str) -> list[Span]:
    # Render the prefix up to each message and take differences; only valid if each prefix stays a prefix.
    spans: list[Span] = []
    prev = ""

    def extend(text: str, what: str) -> str:
        if not text.startswith(prev):
            raise RecordError(record_id, "template", f"tokenizer chat_template is not prefix-stable at {what}")
        return text[len(prev):]

    for i, m in enumerate(messages):
        if m.role == "assistant":
            head = _hf_render(tokenizer, messages[:i], True, record_id)
            spans.append(Span(extend(head, f"the assistant header of message {i}")))
            prev = head
            tail = extend(_hf_render(tokenizer, messages[: i + 1], False, record_id), f"message {i}")
            reply = tail.rstrip()  # the reply and its end-of-turn marker; trailing whitespace is the next prompt's
            if m.content.strip() not in reply:
                raise RecordError(record_id, "template", f"tokenizer chat_template does not render reply {i} verbatim")
            spans.append(Span(reply, True))
            if tail[len(reply):]:
                spans.append(Span(tail[len(reply):]))
            prev += tail
        else:
            full = _hf_render(tokenizer, messages[: i + 1], False, record_id)
            spans.append(Span(extend(full, f"message {i}")))
            prev = full
    if generation:
        spans.append(Span(extend(_hf_render(tokenizer, messages, True, record_id), "the generation prompt")))
    return [s for s in spans if s.text]


TEMPLATES: dict[str, Template] = {
    "plain": Template("plain", _plain, "\n"),
    "vicuna_v1": Template("vicuna_v1", _vicuna_v1, None),
    "llama_2": Template("llama_2", _llama_2, None),
    "chatml": Template("chatml", _chatml, "<|im_end|>"),
    "llama_3": Template("llama_3", _llama_3, "<|eot_id|>"),
    "tokenizer": Template("tokenizer", _tokenizer_template, None, tokenizer_chat_template=True),
}


def get_template(name: str | Template) -> Template:
    """The template registered under exactly `name` (a Template passes through)."""
    if isinstance(name, Template):
        return name
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None


def render_spans(
    messages: Sequence[Message], template: str | Template, tokenizer: Any, *, generation: bool = False, record_id: str = "?"
) -> list[Span]:
    """Spans of a training conversation (ends with a reply) or, with `generation`, of a prompt ending with a user turn."""
    messages = list(messages)
    if generation and (not messages or messages[-1].role != "user"):
        raise ValueError("a generation prompt must end with a user message")
    return get_template(template).render(messages, tokenizer, generation, record_id)


def span_text(span: Span, tokenizer: Any) -> str:
    """The text a span stands for (special tokens by their string; a missing bos renders as nothing)."""
    if span.token is None:
        return span.text
    value = getattr(tokenizer, f"{span.token}_token", None)
    return value or ""


def render_text(
    messages: Sequence[Message], template: str | Template, tokenizer: Any, *, generation: bool = False
) -> str:
    """The full rendered string, as a human would read it (e.g. to compare with LLaVA's prompt)."""
    return "".join(span_text(s, tokenizer) for s in render_spans(messages, template, tokenizer, generation=generation))


def stop_token_ids(template: str | Template, tokenizer: Any) -> list[int]:
    """Ids that end a reply: the eos id and the template's end-of-turn marker when it is a single token."""
    t = get_template(template)
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    end = t.end
    if t.tokenizer_chat_template:
        probe = _tokenizer_template([Message("user", "hi"), Message("assistant", "Q7")], tokenizer, False, "stop-probe")
        reply = next(s.text for s in reversed(probe) if s.supervised)
        end = reply.partition("Q7")[2]
    if end:
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
        if len(end_ids) == 1 and end_ids[0] not in ids:
            ids.append(int(end_ids[0]))
        elif len(end_ids) > 1 and t.name != "plain":
            raise ValueError(f"template {t.name!r}: end marker {end!r} is not one token in this tokenizer (add it as a special token)")
    if not ids:
        raise ValueError(f"template {t.name!r}: the tokenizer has no eos token and no single-token end marker")
    return ids


def chat_template_jinja(name: str) -> str:
    """The Jinja chat template rendering the same text as template `name` (for HF `apply_chat_template`)."""
    t = get_template(name)
    if t.tokenizer_chat_template:
        raise ValueError(f"template {t.name!r} already is the tokenizer's own chat_template")
    path = resources.files("conversation").joinpath("chat_templates", f"{t.name}.jinja")
    if not path.is_file():
        raise FileNotFoundError(f"template {t.name!r} has no conversation/chat_templates/{t.name}.jinja")
    return path.read_text(encoding="utf-8")


def export_chat_template(name: str) -> str | None:
    """The chat template an exported processor carries: ours as Jinja, or None where the tokenizer's own is used."""
    return None if get_template(name).tokenizer_chat_template else chat_template_jinja(name)
