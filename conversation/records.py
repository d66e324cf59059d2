"""Conversation records: parsing LLaVA / OpenAI-style records (the lazily indexed files are in `sources`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from conversation.errors import RecordError

IMAGE_TOKEN = "<image>"
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TurnFormat:
    """How one record flavour spells its turns: the list key, the role and text keys, and its role names."""

    key: str
    role_key: str
    text_key: str
    roles: dict[str, Role]

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset({self.role_key, self.text_key})


# The one role map: LLaVA (`conversations`, human/gpt) and OpenAI-style (`messages`, user/assistant) records.
TURN_FORMATS: dict[str, TurnFormat] = {
    "conversations": TurnFormat("conversations", "from", "value",
                                {"human": "user", "gpt": "assistant", "system": "system"}),
    "messages": TurnFormat("messages", "role", "content",
                           {"user": "user", "assistant": "assistant", "system": "system"}),
}


def is_valid_unicode(text: str) -> bool:
    """False for text holding lone surrogates (a JSON `\\ud800` escape, or invalid UTF-8 bytes read leniently)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode_text(text: str, rid: str, where: str) -> str:
    if not is_valid_unicode(text):
        raise RecordError(rid, where, "text is not valid Unicode (a lone surrogate such as \\ud800, or invalid UTF-8)")
    return text


@dataclass(frozen=True)
class Message:
    """One turn; `content` holds `<image>` placeholders where images go."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A parsed record: alternating user/assistant messages (optional leading system) and image refs."""

    id: str
    messages: list[Message]
    images: list[str] = field(default_factory=list)


def record_id(raw: Any, index: int) -> str:
    """The id used in messages: the record's `id` (string or int), else `#<index>`."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), (str, int)) and not isinstance(raw.get("id"), bool):
        # printable and writable whatever it holds: lone surrogates become \\udXXX escapes
        return str(raw["id"]).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"#{index}"


def _images_of(raw: dict, rid: str) -> list[str]:
    if "image" in raw and "images" in raw:
        raise RecordError(rid, "image", "both 'image' and 'images' given")
    key = "image" if "image" in raw else "images"
    value = raw.get(key)
    if value is None:
        return []
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise RecordError(rid, key, "must be a non-empty string or a list of non-empty strings")
    return [_unicode_text(r, rid, key) for r in refs]


def _openai_content(content: Any, rid: str, where: str) -> tuple[str, list[str]]:
    """Flatten OpenAI content (str or list of text/image parts) to text with placeholders, plus inline refs."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RecordError(rid, where, f"content must be a string or a list of parts, got {type(content).__name__}")
    pieces: list[str] = []
    refs: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
            raise RecordError(rid, f"{where}[{j}]", "a part must be {'type': 'text'|'image', ...}")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise RecordError(rid, f"{where}[{j}].text", "text part without a string 'text'")
            pieces.append(_unicode_text(part["text"], rid, f"{where}[{j}].text"))
        else:
            ref = part.get("image", part.get("path"))
            if ref is not None:
                if not isinstance(ref, str) or not ref.strip():
                    raise RecordError(rid, f"{where}[{j}].image", "image ref must be a non-empty string")
                refs.append(_unicode_text(ref, rid, f"{where}[{j}].image"))
            pieces.append(IMAGE_TOKEN)
    return "\n".join(pieces), refs


def _turns(raw: dict, rid: str) -> tuple[list[Message], list[str]]:
    if "conversations" in raw and "messages" in raw:
        raise RecordError(rid, "conversations", "both 'conversations' and 'messages' given")
    fmt = TURN_FORMATS.get("conversations" if "conversations" in raw else "messages" if "messages" in raw else "")
    if fmt is None:
        raise RecordError(rid, "conversations", "record has neither 'conversations' nor 'messages'")
    key, role_key, text_key, roles, allowed = fmt.key, fmt.role_key, fmt.text_key, fmt.roles, fmt.allowed
    turns = raw[key]
    if not isinstance(turns, list) or not turns:
        raise RecordError(rid, key, "must be a non-empty list of turns")
    messages: list[Message] = []
    inline_refs: list[str] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(rid, where, f"a turn must be an object, got {type(turn).__name__}")
        unknown = sorted(set(turn) - allowed)
        if unknown:
            raise RecordError(rid, where, f"unknown keys {unknown} (allowed: {sorted(allowed)})")
        role = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise RecordError(rid, f"{where}.{role_key}", f"unknown role {turn.get(role_key)!r}; expected one of {sorted(roles)}")
        if key == "messages":
            text, refs = _openai_content(turn.get(text_key), rid, f"{where}.{text_key}")
            inline_refs.extend(refs)
        else:
            text = turn.get(text_key)
            if not isinstance(text, str):
                raise RecordError(rid, f"{where}.{text_key}", "turn text must be a string")
            _unicode_text(text, rid, f"{where}.{text_key}")
        if not text.strip():
            raise RecordError(rid, f"{where}.{text_key}", "empty turn")
        messages.append(Message(role, text))
    return messages, inline_refs


def _check_order(messages: list[Message], rid: str) -> None:
    body = messages[1:] if messages[0].role == "system" else messages
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg.role != expected:
            pos = i + (len(messages) - len(body))
            raise RecordError(rid, f"turn {pos}", f"role {msg.role!r} where {expected!r} was expected (roles must alternate user/assistant, starting with user)")
    if not body:
        raise RecordError(rid, "turn 0", "only a system message")
    if body[-1].role != "assistant":
        raise RecordError(rid, f"turn {len(messages) - 1}", "conversation ends with a user turn: no reply to learn")


def _place_images(messages: list[Message], n_images: int, rid: str) -> list[Message]:
    counts = [m.content.count(IMAGE_TOKEN) for m in messages]
    for i, (m, c) in enumerate(zip(messages, counts)):
        if c and m.role != "user":
            raise RecordError(rid, f"turn {i}", f"{IMAGE_TOKEN} in a {m.role} turn (images belong to user turns)")
    total = sum(counts)
    first_user = next(i for i, m in enumerate(messages) if m.role == "user")
    out = list(messages)
    if total == 0 and n_images > 0:
        # LLaVA prepends the placeholder when an image record has none; so do we, but only for one image.
        if n_images > 1:
            raise RecordError(rid, "image", f"{n_images} images but no {IMAGE_TOKEN} placeholder (several images need explicit placement)")
        out[first_user] = Message("user", f"{IMAGE_TOKEN}\n{messages[first_user].content.strip()}")
        return out
    if total != n_images:
        raise RecordError(rid, "image", f"{total} {IMAGE_TOKEN} placeholder(s) for {n_images} image(s)")
    if n_images == 1:
        # LLaVA's convention: the lone placeholder (and its adjoining newline) moves to the start of its turn.
        i = counts.index(1)
        rest = messages[i].content.replace(IMAGE_TOKEN, "").strip()
        out[i] = Message("user", f"{IMAGE_TOKEN}\n{rest}")
    return out


def parse_record(raw: dict, index: int) -> Conversation:
    """Parse one LLaVA (`conversations`) or OpenAI-style (`messages`) record; RecordError on anything wrong."""
    rid = record_id(raw, index)
    if not isinstance(raw, dict):
        raise RecordError(rid, "record", f"must be a JSON object, got {type(raw).__name__}")
    messages, inline_refs = _turns(raw, rid)
    images = _images_of(raw, rid)
    if inline_refs:
        if images:
            raise RecordError(rid, "image", "images given both inline in content parts and in 'image'")
        images = inline_refs
    _check_order(messages, rid)
    return Conversation(rid, _place_images(messages, len(images), rid), images)
