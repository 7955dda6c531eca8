"""Batch input files: requests as JSONL lines, split to the provider's limits, and uploaded.

One line per request::

    {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

OpenAI's batch endpoint is ``/v1/chat/completions``; Azure's is
``/chat/completions`` (its routes have no ``/v1``), and there ``body.model``
names the global-batch *deployment*. A batch serves one model, so requests
are grouped by model first; then a file is closed before it would pass the
most lines, bytes, or (when the enqueued-token limit is known) estimated
prompt tokens a batch may hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._config import Endpoint
from .._core._tokens import estimate_prompt_tokens
from .._errors import ConfigError, EndpointError
from ._calls import Stop, call, never, pause
from ._config import BatchAPI

__all__ = ["InputFile", "batch_url", "build_files", "prompt_tokens", "upload"]

#: Seconds an uploaded file may stay "pending" (Azure) before the batch is created anyway.
READY_TIMEOUT = 600.0
# Azure processes an upload before a batch may use it; these statuses mean "not yet".
_NOT_READY = ("uploaded", "pending", "running")


@dataclass(frozen=True)
class InputFile:
    """One batch's input file, ready to upload.

    Attributes
    ----------
    model : str
        The model (Azure: deployment) of every line.
    content : bytes
        The JSONL.
    custom_ids : tuple of str
        The lines' ids, in order.
    tokens : int
        Estimated prompt tokens of the lines (what the enqueued-token limit counts).
    """

    model: str
    content: bytes = field(repr=False)
    custom_ids: tuple[str, ...] = field(repr=False)
    tokens: int

    @property
    def rows(self) -> int:
        return len(self.custom_ids)

    def __repr__(self) -> str:
        return f"InputFile(model={self.model!r}, rows={self.rows}, bytes={len(self.content)}, tokens={self.tokens})"


def batch_url(endpoint: Endpoint) -> str:
    """The batch endpoint (and every line's ``url``) for chat completions at ``endpoint``."""
    return "/chat/completions" if endpoint.is_azure else "/v1/chat/completions"


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a chat-completions request body (chars/4, offline)."""
    messages = body.get("messages") or []
    # Multimodal messages carry a list of parts; only the text parts are text.
    flat = [{"content": _text(message.get("content"))} for message in messages if isinstance(message, Mapping)]
    return estimate_prompt_tokens(flat)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def build_files(
    items: Iterable[tuple[str, Mapping[str, Any]]],
    options: BatchAPI,
    *,
    url: str = "/v1/chat/completions",
    deployment: str | None = None,
    max_tokens: Callable[[str], int | None] | None = None,
) -> list[InputFile]:
    """Turn requests into batch input files.

    Parameters
    ----------
    items : iterable of (str, dict)
        ``(custom_id, body)``: the id the answer comes back under, and a
        chat-completions request body (``model``, ``messages``, parameters).
    options : BatchAPI
        Gives ``max_requests_per_file`` and ``max_bytes_per_file``.
    url : str
        Every line's ``url``: :func:`batch_url` of the endpoint.
    deployment : str, optional
        Azure: replaces ``body.model`` in every line.
    max_tokens : callable, optional
        Most estimated prompt tokens in one file of a model (the
        enqueued-token limit), or ``None`` for no such limit.

    Returns
    -------
    list of InputFile
        Grouped by model in order of first appearance, each group in the
        order given.

    Raises
    ------
    ConfigError
        A custom_id that is not a non-empty string or appears twice, a body
        without a model or messages, or one request larger than a whole file may be.
    """
    by_model: dict[str, list[tuple[str, bytes, int]]] = {}
    seen: set[str] = set()
    for custom_id, body in items:
        if not isinstance(custom_id, str) or not custom_id:
            raise ConfigError(f"a batch custom_id must be a non-empty string, got {custom_id!r}")
        if custom_id in seen:
            raise ConfigError(f"custom_id {custom_id!r} appears twice; a batch needs each once")
        seen.add(custom_id)
        if not isinstance(body, Mapping) or not isinstance(body.get("model"), str) or not body["model"]:
            raise ConfigError(f"request {custom_id!r} has no model")
        if not isinstance(body.get("messages"), list):
            raise ConfigError(f"request {custom_id!r} has no messages list (only chat completions are batched)")
        body = dict(body, model=deployment) if deployment else dict(body)
        line = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
        # Compact and UTF-8 as is: the byte limit counts what is sent.
        data = json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        if len(data) > options.max_bytes_per_file:
            raise ConfigError(
                f"request {custom_id!r} is {len(data):,} bytes as a batch line, more than "
                f"BatchAPI.max_bytes_per_file ({options.max_bytes_per_file:,})"
            )
        by_model.setdefault(body["model"], []).append((custom_id, data, prompt_tokens(body)))

    files: list[InputFile] = []
    for model, lines in by_model.items():
        cap = max_tokens(model) if max_tokens is not None else None
        chunk: list[tuple[str, bytes, int]] = []
        size = tokens = 0
        for entry in lines:
            full = (
                len(chunk) >= options.max_requests_per_file
                or size + len(entry[1]) > options.max_bytes_per_file
                or (cap is not None and tokens + entry[2] > cap)
            )
            if chunk and full:
                files.append(_file(model, chunk))
                chunk, size, tokens = [], 0, 0
            chunk.append(entry)
            size += len(entry[1])
            tokens += entry[2]
        if chunk:
            files.append(_file(model, chunk))
    return files


def _file(model: str, chunk: list[tuple[str, bytes, int]]) -> InputFile:
    return InputFile(
        model=model,
        content=b"".join(data for _, data, _ in chunk),
        custom_ids=tuple(custom_id for custom_id, _, _ in chunk),
        tokens=sum(tokens for _, _, tokens in chunk),
    )


def upload(endpoint: Endpoint, file: InputFile, name: str, options: BatchAPI, should_stop: Stop = never) -> str | None:
    """Upload ``file`` with purpose ``batch`` and return its id once a batch may use it.

    Azure processes an upload first and refuses a batch whose file is still
    ``pending``; so there the file is polled (at most :data:`READY_TIMEOUT`
    seconds) until it is ``processed``. OpenAI's are ready at once.

    Returns
    -------
    str or None
        The file id; ``None`` if ``should_stop`` said stop while waiting.

    Raises
    ------
    EndpointError
        The upload failed, or the provider could not process the file.
    """
    # (name, bytes, type) is the in-memory shape the client sends as a multipart file part.
    uploaded = call(
        endpoint,
        "uploading a batch input file",
        lambda client: client.files.create(file=(name, file.content, "application/jsonl"), purpose="batch"),
        should_stop=should_stop,
        timeout=options.transfer_timeout,
    )
    status = getattr(uploaded, "status", None)
    deadline = time.monotonic() + READY_TIMEOUT
    while endpoint.is_azure and status in _NOT_READY and time.monotonic() < deadline:
        if pause(min(options.poll_interval, 2.0), should_stop):
            return None
        file_id: str = uploaded.id

        def retrieve(client: Any, file_id: str = file_id) -> Any:
            return client.files.retrieve(file_id)

        uploaded = call(endpoint, "checking an uploaded file", retrieve)
        status = getattr(uploaded, "status", None)
    if status == "error":
        details = getattr(uploaded, "status_details", None) or "no details"
        raise EndpointError(f"the provider could not process batch input file {uploaded.id}: {details}")
    return uploaded.id
