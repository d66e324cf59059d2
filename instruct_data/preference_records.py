"""Preference records (prompt turns + `chosen` + `rejected` reply): parsing and the view the audit / validation
measure (no torch: `vlm data validate` imports it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conversation.errors import RecordError
from conversation.records import TURN_FORMATS, Conversation, Message, is_valid_unicode, parse_record, record_id

REPLY_KEYS = ("chosen", "rejected")


def is_preference_record(raw: Any) -> bool:
    """A record with `chosen` or `rejected` is a preference record (and is judged as one: both are required)."""
    return isinstance(raw, dict) and any(key in raw for key in REPLY_KEYS)


@dataclass(frozen=True)
class PreferencePair:
    """A parsed preference record: the prompt (ends with a user turn), its images and the two replies."""

    id: str
    prompt: list[Message]
    images: list[str]
    chosen: str
    rejected: str

    def conversation(self, which: str) -> Conversation:
        """The prompt followed by the `chosen` or `rejected` reply."""
        return Conversation(self.id, [*self.prompt, Message("assistant", getattr(self, which))], self.images)

    def longer(self) -> Conversation:
        """The side with the longer reply (what the audit and validation measure a pair by)."""
        return self.conversation("chosen" if len(self.chosen) >= len(self.rejected) else "rejected")


def parse_preference(raw: Any, index: int) -> PreferencePair:
    """Parse one preference record; RecordError naming it for a missing / empty / non-text reply, identical replies,
    or a prompt that does not end with a user turn (plus everything `parse_record` refuses in the prompt)."""
    rid = record_id(raw, index)
    if not isinstance(raw, dict):
        raise RecordError(rid, "record", f"must be a JSON object, got {type(raw).__name__}")
    replies = {}
    for key in REPLY_KEYS:
        value = raw.get(key)
        if not isinstance(value, str):
            raise RecordError(rid, key, f"a preference record needs a string {key!r} reply, got "
                                        f"{type(value).__name__}")
        if not value.strip():
            raise RecordError(rid, key, "empty reply")
        if not is_valid_unicode(value):
            raise RecordError(rid, key, "text is not valid Unicode (a lone surrogate such as \\ud800)")
        replies[key] = value
    if replies["chosen"].strip() == replies["rejected"].strip():
        raise RecordError(rid, "rejected", "identical to 'chosen': the pair teaches nothing")
    fmt = TURN_FORMATS.get("conversations" if "conversations" in raw else "messages" if "messages" in raw else "")
    turns = raw.get(fmt.key) if fmt is not None else None
    if fmt is None or not isinstance(turns, list) or not turns:
        raise RecordError(rid, "conversations", "a preference record needs a non-empty 'conversations' prompt")
    last = turns[-1]
    role = last.get(fmt.role_key) if isinstance(last, dict) else None
    if not isinstance(role, str) or fmt.roles.get(role) != "user":
        raise RecordError(rid, f"{fmt.key}[{len(turns) - 1}]", f"the prompt must end with a human turn, not "
                                                               f"{role!r} (the replies are 'chosen' and 'rejected')")
    reply_turn = ({"from": "gpt", "value": replies["chosen"]} if fmt.key == "conversations"
                  else {"role": "assistant", "content": replies["chosen"]})
    prompt_raw = {k: v for k, v in raw.items() if k not in REPLY_KEYS}
    prompt_raw[fmt.key] = [*turns, reply_turn]
    conv = parse_record(prompt_raw, index)  # the prompt's roles, images and placeholders, as for instruct records
    return PreferencePair(rid, conv.messages[:-1], conv.images, replies["chosen"], replies["rejected"])


def preference_view(raw: Any, index: int) -> Conversation | None:
    """The conversation `vlm data audit` / `validate` measure for a preference record (its longer side), None for
    an instruct record; RecordError for a bad pair."""
    return parse_preference(raw, index).longer() if is_preference_record(raw) else None


def record_conversation(records: Any, i: int) -> Conversation:
    """Record i of a `RecordSource` as the audit measures it: a preference pair's longer side, else the record."""
    view = preference_view(records.raw(i), i)
    return view if view is not None else records.conversation(i)
