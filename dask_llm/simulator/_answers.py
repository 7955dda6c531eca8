"""Deterministic answers and the simulator's own token count.

Tests compare every row the library writes against :func:`expected_answer`, and
the server calls exactly this function, so both sides agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._config import DEFAULT_LABELS, Mode

__all__ = [
    "count_tokens",
    "expected_answer",
    "last_user_text",
    "message_text",
    "prompt_tokens",
    "truncate",
]

# Words and single punctuation marks. Deliberately unlike the library's chars/4
# estimate, so that estimates are tested against something independent.
_PIECE = re.compile(r"\w+|[^\w\s]")

# Chat formats spend a few tokens per message on role markers; OpenAI's cookbook uses 3.
TOKENS_PER_MESSAGE = 3

_JSON_RESPONSE_FORMATS = ("json_schema", "json_object")


def count_tokens(text: str) -> int:
    """Count the simulator's tokens in `text`: runs of word characters and single punctuation marks.

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    int
        The number of pieces matching ``\\w+|[^\\w\\s]``.
    """
    return len(_PIECE.findall(text))


def message_text(message: Mapping[str, Any]) -> str:
    """Return the text of one chat message.

    Parameters
    ----------
    message : mapping
        A chat message; its ``content`` is a string, ``None``, or a list of
        parts of which the ``{"type": "text", "text": ...}`` ones count.

    Returns
    -------
    str
        The string content, or the text parts joined, or ``""``.
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Count the prompt tokens of a request: every message's text plus 3 per message.

    Parameters
    ----------
    messages : sequence of mapping
        The chat messages of the request.

    Returns
    -------
    int
        The ``usage.prompt_tokens`` the simulator reports.
    """
    return sum(count_tokens(message_text(message)) + TOKENS_PER_MESSAGE for message in messages)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the text of the last message whose role is ``"user"``, or ``""`` if none.

    Parameters
    ----------
    messages : sequence of mapping
        The chat messages of the request.

    Returns
    -------
    str
        The text of the last user message.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def expected_answer(
    messages: Sequence[Mapping[str, Any]],
    mode: Mode = "label",
    labels: Sequence[str] = DEFAULT_LABELS,
    *,
    response_format: Mapping[str, Any] | None = None,
) -> str:
    """Return the answer the simulator gives to `messages`.

    Parameters
    ----------
    messages : sequence of mapping
        The chat messages, as sent in the request body.
    mode : {"label", "echo"}
        ``"echo"`` returns the last user message unchanged. ``"label"`` returns
        one of `labels`, chosen by the SHA-256 of the messages' canonical JSON
        (sorted keys, compact separators, UTF-8), so the choice is stable across
        processes and Python versions.
    labels : sequence of str
        Candidate labels in label mode.
    response_format : mapping, optional
        The request's ``response_format``. In label mode, a ``json_object``
        format, or a ``json_schema`` one whose schema has no properties, turns
        the answer into ``{"label": <label>}``; a ``json_schema`` describing an
        object with properties gets an object that fits it, every value drawn
        from a stable hash of the messages and the value's place (strings are
        the label, enums one of their values, numbers within their bounds).

    Returns
    -------
    str
        The content of the assistant message (before any ``max_tokens`` truncation).

    Raises
    ------
    ValueError
        If `mode` is unknown or `labels` is empty.
    """
    if mode == "echo":
        return last_user_text(messages)
    if mode != "label":
        raise ValueError(f"mode must be 'label' or 'echo', got {mode!r}")
    if not labels:
        raise ValueError("labels must not be empty")
    canonical = json.dumps(list(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    label = labels[int.from_bytes(digest[:8], "big") % len(labels)]
    if response_format is not None and response_format.get("type") in _JSON_RESPONSE_FORMATS:
        schema = _requested_schema(response_format)
        if schema is not None:
            return json.dumps(_fit(schema, schema, canonical, label, "$", 0), ensure_ascii=False)
        return json.dumps({"label": label})
    return label


def _requested_schema(response_format: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``json_schema`` format's schema when it describes an object with
    properties; otherwise ``None`` (the answer stays ``{"label": ...}``)."""
    if response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        return None
    top = _deref(schema, schema)
    props = top.get("properties")
    return schema if isinstance(props, Mapping) and props else None


def _deref(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(32):  # bounded: a $ref cycle must not hang the server
        ref = node.get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#/")):
            return node
        target: Any = root
        try:
            for part in ref[2:].split("/"):
                target = target[part]
        except (KeyError, TypeError):
            return {}
        node = target if isinstance(target, Mapping) else {}
    return {}


def _draw(canonical: str, path: str) -> int:
    """A stable pseudo-random integer for one place in the answer."""
    return int.from_bytes(hashlib.sha256(f"{path}\x1f{canonical}".encode()).digest()[:8], "big")


def _fit(node: Mapping[str, Any], root: Mapping[str, Any], canonical: str, label: str, path: str, depth: int) -> Any:
    """A value that fits `node`, drawn deterministically from the messages.

    Strings are the label (so a ``service``-like field reads like label mode),
    enums and consts pick a listed value, numbers stay within ``minimum`` and
    ``maximum``, arrays hold one to three items, objects every property.
    """
    node = _deref(node, root)
    draw = _draw(canonical, path)
    if "const" in node:
        return node["const"]
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        return enum[draw % len(enum)]
    options = node.get("anyOf")
    if isinstance(options, list) and options:
        real = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
        return _fit(real[0], root, canonical, label, path, depth + 1) if real and depth < 16 else None
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" and depth < 16:
        props = node.get("properties") or {}
        return {k: _fit(v, root, canonical, label, f"{path}.{k}", depth + 1) for k, v in props.items()}
    if kind == "array" and depth < 16:
        raw_items = node.get("items")
        items: Mapping[str, Any] = raw_items if isinstance(raw_items, Mapping) else {"type": "string"}
        return [_fit(items, root, canonical, label, f"{path}[{i}]", depth + 1) for i in range(1 + draw % 3)]
    if kind == "integer":
        low = int(node.get("minimum", 0))
        high = int(node.get("maximum", low + 10))
        return low + draw % (max(high, low) - low + 1)
    if kind == "number":
        f_low = float(node.get("minimum", 0.0))
        f_high = float(node.get("maximum", 1.0 if f_low <= 0 else f_low + 1.0))
        return round(f_low + (max(f_high, f_low) - f_low) * (draw % 1001) / 1000, 3)
    if kind == "boolean":
        return bool(draw % 2)
    if kind == "null":
        return None
    return label


def truncate(answer: str, max_tokens: int | None) -> tuple[str, int, bool]:
    """Cut `answer` after its first `max_tokens` pieces.

    Parameters
    ----------
    answer : str
        The full answer.
    max_tokens : int, optional
        The request's ``max_tokens`` (or ``max_completion_tokens``); ``None`` means no limit.

    Returns
    -------
    content : str
        The answer up to the end of its last kept piece, whitespace included as written.
    completion_tokens : int
        The token count of `content`.
    truncated : bool
        Whether pieces were dropped, i.e. ``finish_reason`` is ``"length"``.
    """
    pieces = list(_PIECE.finditer(answer))
    if max_tokens is None or len(pieces) <= max_tokens:
        return answer, len(pieces), False
    # Slicing at the end of a match keeps the prefix tokenizing to exactly max_tokens pieces.
    end = pieces[max_tokens - 1].end() if max_tokens > 0 else 0
    return answer[:end], max_tokens, True
