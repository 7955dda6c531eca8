"""One batch of the OpenAI Batch API: its input lines and its life on the server's clock.

A batch is not run by a task: its state is a function of the time since its
creation, brought up to date by :meth:`Batch.advance` whenever anyone looks
(a request, the stats). So it needs nothing to be cancelled when the server
stops, and two polls at the same instant always agree.

The turnaround ``T`` is split like this, from creation::

    0 ─ validating ─ 0.1 T ─ in_progress (lines answered evenly) ─ 0.9 T ─ finalizing ─ T: completed

A batch whose input is invalid, or which would exceed the enqueued token
limit, fails at ``0.1 T``; one still unfinished at ``batch_expire_after``
expires; a cancelled one freezes its answered lines and is cancelled ``0.1 T``
later.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable
from typing import Any

from ._answers import prompt_tokens
from ._config import SimulatorConfig
from ._files import FileStore

__all__ = ["ENDPOINTS", "FINAL_STATUSES", "Batch", "BatchLine", "LineAnswer", "validate_input"]

#: Batch endpoints served: OpenAI's, and Azure's without ``/v1``.
ENDPOINTS = ("/v1/chat/completions", "/chat/completions")

#: Statuses a batch never leaves.
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")

# Shares of the turnaround spent validating and in progress; finalizing takes the rest.
_VALIDATING = 0.1
_IN_PROGRESS = 0.8
# Validation errors reported at most, like a provider truncating a long list.
_MAX_ERRORS = 100

#: Answers one line's body with a generator for its draws: (status code, response body).
LineAnswer = Callable[[dict[str, Any], random.Random], tuple[int, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class BatchLine:
    """A valid input line: its 1-based number, ``custom_id``, request body and prompt tokens."""

    number: int
    custom_id: str
    body: dict[str, Any]
    tokens: int


def validate_input(content: bytes, endpoint: str) -> tuple[list[BatchLine], str | None, list[dict[str, Any]]]:
    """Check a batch input file line by line, as OpenAI does while a batch is validating.

    Parameters
    ----------
    content : bytes
        The JSONL input file.
    endpoint : str
        The batch's endpoint, which every line's ``url`` must name (with or without ``/v1``).

    Returns
    -------
    lines : list of BatchLine
        The valid lines.
    model : str or None
        The model of the lines (a batch serves one model).
    errors : list of dict
        ``BatchError`` objects (``code``, ``message``, ``param``, ``line``), at
        most 100; the batch fails if there is any.
    """
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None

    def error(code: str, message: str, number: int | None, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            error("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        custom_id = data.get("custom_id")
        body = data.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            error("missing_required_parameter", "Missing required parameter: 'custom_id'.", number, "custom_id")
        elif custom_id in seen:
            message = f"The custom_id for this request is a duplicate of another request: {custom_id!r}."
            error("duplicate_custom_id", message, number, "custom_id")
        elif data.get("method") != "POST":
            error("invalid_method", "The method of this request must be 'POST'.", number, "method")
        elif _unversioned(data.get("url")) != _unversioned(endpoint):
            error("url_mismatch", "The URL provided for this request does not match the batch endpoint.", number, "url")
        elif not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error("missing_required_parameter", "Missing required parameter: 'body.model'.", number, "body.model")
        elif model is not None and body["model"] != model:
            message = f"The provided model {body['model']!r} does not match the other requests' ({model!r})."
            error("model_mismatch", message, number, "body.model")
        else:
            seen.add(custom_id)
            model = body["model"]
            messages = body.get("messages")
            tokens = prompt_tokens(messages) if messages is not None and _is_message_list(messages) else 0
            lines.append(BatchLine(number, custom_id, body, tokens))
    if not lines and not errors:
        error("empty_file", "The batch input file is empty.", None)
    return lines, model, errors[:_MAX_ERRORS]


def _unversioned(url: Any) -> Any:
    return url.removeprefix("/v1") if isinstance(url, str) else url


def _is_message_list(messages: Any) -> bool:
    return isinstance(messages, list) and all(isinstance(message, dict) for message in messages)


class Batch:
    """A batch and its results, advanced lazily on the server's clock.

    Parameters
    ----------
    batch_id : str
        Its id, ``batch_...``.
    request : dict
        ``input_file_id``, ``endpoint``, ``completion_window`` and ``metadata`` as created.
    lines : list of BatchLine
        The valid input lines.
    model : str, optional
        The lines' model.
    failure : list of dict
        ``BatchError`` objects: non-empty if the batch fails at the end of its validation.
    config : SimulatorConfig
        Gives the turnaround, the expiry and the seed.
    created : float
        Creation time on the server's monotonic clock.
    wall : float
        The same instant as a Unix time, for the timestamps the API shows.
    """

    def __init__(
        self,
        batch_id: str,
        request: dict[str, Any],
        lines: list[BatchLine],
        model: str | None,
        failure: list[dict[str, Any]],
        config: SimulatorConfig,
        created: float,
        wall: float,
    ) -> None:
        self.id = batch_id
        self.request = request
        self.lines = lines
        self.model = model
        self.failure = failure
        self.tokens = sum(line.tokens for line in lines)
        self._created = created
        self._wall = wall
        turnaround = config.batch_turnaround
        self._validated = created + _VALIDATING * turnaround
        self._in_progress = _IN_PROGRESS * turnaround
        self._finalizing = self._validated + self._in_progress
        self._done = created + turnaround
        self._expires = created + config.batch_expire_after
        self._cancel_seconds = _VALIDATING * turnaround
        # Its own generator: the batch's draws neither shift nor depend on the chat draws.
        self._rng = random.Random(f"{config.seed}:{batch_id}") if config.seed is not None else random.Random()
        self.answered = 0
        self.completed = 0
        self.failed = 0
        self.usage = [0, 0]  # prompt and completion tokens of the lines answered 200
        self._output: list[bytes] = []
        self._errors: list[bytes] = []
        self.status = "validating"
        self._times: dict[str, float] = {}
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the batch has reached a final status."""
        return self.status in FINAL_STATUSES

    def advance(self, now: float, answer: LineAnswer, files: FileStore) -> None:
        """Bring the batch up to `now`: answer the lines due, move through the statuses.

        Parameters
        ----------
        now : float
            The server's monotonic clock.
        answer : callable
            Answers one line's body; see :data:`LineAnswer`.
        files : FileStore
            Where the output and error files go when the batch ends.
        """
        if self.finished:
            return
        if self.status == "cancelling":
            if now >= self._times["cancelling"] + self._cancel_seconds:
                self._finish("cancelled", self._times["cancelling"] + self._cancel_seconds, files)
            return
        # Nothing happens after the expiry but the expiry itself.
        t = min(now, self._expires)
        if t >= self._validated and self.status == "validating":
            if self.failure:
                self._finish("failed", self._validated, files)
                return
            self.status = "in_progress"
            self._times["in_progress"] = self._validated
        if self.status != "validating":
            self._answer_until(t, answer)
        if t >= self._finalizing and self.status == "in_progress":
            self.status = "finalizing"
            self._times["finalizing"] = self._finalizing
        if t >= self._done:
            self._finish("completed", self._done, files)
        elif now >= self._expires:
            self._expire(files)

    def cancel(self, now: float, answer: LineAnswer, files: FileStore) -> bool:
        """Start cancelling: the lines answered by `now` are kept, no other is answered.

        Returns
        -------
        bool
            ``False`` if the batch had already finished (or was already cancelling).
        """
        self.advance(now, answer, files)
        if self.finished or self.status == "cancelling":
            return False
        self.status = "cancelling"
        self._times["cancelling"] = now
        return True

    def _answer_until(self, t: float, answer: LineAnswer) -> None:
        total = len(self.lines)
        if self._in_progress <= 0 or t >= self._finalizing:
            due = total
        else:
            due = min(total, math.floor(total * (t - self._validated) / self._in_progress))
        while self.answered < due:
            line = self.lines[self.answered]
            self.answered += 1
            status, body = answer(line.body, self._rng)
            record = {
                "id": f"batch_req_{self.id.removeprefix('batch_')}_{line.number:06d}",
                "custom_id": line.custom_id,
                "response": {"status_code": status, "request_id": f"req_{self.id}_{line.number}", "body": body},
                "error": None,
            }
            if status == 200:
                self.completed += 1
                self.usage[0] += body["usage"]["prompt_tokens"]
                self.usage[1] += body["usage"]["completion_tokens"]
                self._output.append(_jsonl(record))
            else:
                self.failed += 1
                self._errors.append(_jsonl(record))

    def _expire(self, files: FileStore) -> None:
        # As OpenAI does: what was answered stays in the output file, the rest is an error each.
        for line in self.lines[self.answered :]:
            record = {
                "id": f"batch_req_{self.id.removeprefix('batch_')}_{line.number:06d}",
                "custom_id": line.custom_id,
                "response": None,
                "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                },
            }
            self.failed += 1
            self._errors.append(_jsonl(record))
        self._finish("expired", self._expires, files)

    def _finish(self, status: str, at: float, files: FileStore) -> None:
        self.status = status
        self._times[status] = at
        if self._output:
            self.output_file_id = files.add(f"{self.id}_output.jsonl", "batch_output", b"".join(self._output)).id
        if self._errors:
            self.error_file_id = files.add(f"{self.id}_error.jsonl", "batch_output", b"".join(self._errors)).id
        # The results now live in the files.
        self._output, self._errors = [], []

    def _unix(self, event: str) -> int | None:
        at = self._times.get(event)
        return None if at is None else int(self._wall + (at - self._created))

    def to_object(self) -> dict[str, Any]:
        """The ``Batch`` object the API answers, as of the last :meth:`advance`."""
        counted = self.status not in ("validating", "failed")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.request["endpoint"],
            "errors": {"object": "list", "data": self.failure} if self.status == "failed" else None,
            "input_file_id": self.request["input_file_id"],
            "completion_window": self.request["completion_window"],
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self._wall),
            "in_progress_at": self._unix("in_progress"),
            "expires_at": int(self._wall + (self._expires - self._created)),
            "finalizing_at": self._unix("finalizing"),
            "completed_at": self._unix("completed"),
            "failed_at": self._unix("failed"),
            "expired_at": self._unix("expired"),
            "cancelling_at": self._unix("cancelling"),
            "cancelled_at": self._unix("cancelled"),
            "request_counts": {
                "total": len(self.lines) if counted else 0,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.request["metadata"],
            "model": self.model,
            "usage": {
                "input_tokens": self.usage[0],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.usage[1],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage[0] + self.usage[1],
            },
        }


def _jsonl(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n"
