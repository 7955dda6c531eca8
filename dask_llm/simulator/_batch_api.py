"""The files and batches routes of the OpenAI Batch API, and Azure's variant of them.

OpenAI serves ``/v1/files`` and ``/v1/batches``; Azure serves the same under
``/openai/files`` and ``/openai/batches`` with an ``?api-version=`` query
(ignored here). Routes::

    POST   /v1/files                 upload (multipart/form-data: purpose, file)
    GET    /v1/files                 list, newest first (after, limit, purpose, order)
    GET    /v1/files/{id}            FileObject
    GET    /v1/files/{id}/content    the bytes
    DELETE /v1/files/{id}            FileDeleted
    POST   /v1/batches               create (input_file_id, endpoint, completion_window, metadata)
    GET    /v1/batches               list, newest first (after, limit)
    GET    /v1/batches/{id}          Batch
    POST   /v1/batches/{id}/cancel   Batch, cancelling
"""

from __future__ import annotations

import itertools
import json
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Any

from ._batch import ENDPOINTS, Batch, LineAnswer, validate_input
from ._chat import ApiError
from ._config import SimulatorConfig
from ._files import FILE_PURPOSES, FileStore, cursor_page, parse_multipart
from ._http import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, Request, Response, json_response
from ._stats import Stats

__all__ = ["BatchApi"]

_ROUTE = re.compile(r"/(?:v1|openai)/(files|batches)(?:/([^/]+)(?:/(content|cancel))?)?/?")
_UPLOAD_PATHS = ("/v1/files", "/openai/files")
# Batches that still hold enqueued tokens.
_ENQUEUED = ("validating", "in_progress")


class BatchApi:
    """Files and batches of one simulator, kept in memory.

    Parameters
    ----------
    config : SimulatorConfig
        The batch knobs.
    clock : callable
        The server's monotonic clock.
    stats : Stats
        Counts uploads, batches and lines.
    answer : callable
        Answers a line's body; see :data:`~dask_llm.simulator._batch.LineAnswer`.
    """

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float], stats: Stats, answer: LineAnswer) -> None:
        self.config = config
        self._clock = clock
        self._stats = stats
        self._answer = answer
        self.reset()

    def reset(self) -> None:
        """Forget every file and batch; ids start again from 1."""
        self.files = FileStore()
        self.batches: dict[str, Batch] = {}
        self._ids = itertools.count(1)

    @staticmethod
    def matches(path: str) -> bool:
        """Whether `path` is a files or batches route."""
        return _ROUTE.fullmatch(path) is not None

    @staticmethod
    def body_limit(method: str, path: str) -> int:
        """Most body bytes for a request: an upload may be large, anything else is small."""
        return MAX_UPLOAD_BYTES if method == "POST" and path.rstrip("/") in _UPLOAD_PATHS else MAX_BODY_BYTES

    def advance(self) -> None:
        """Bring every batch up to now, oldest first (an older batch's tokens leave the queue first)."""
        now = self._clock()
        for batch in self.batches.values():
            batch.advance(now, self._answer, self.files)

    def status_counts(self) -> dict[str, int]:
        """Batches by status, as of the last :meth:`advance`."""
        return dict(Counter(batch.status for batch in self.batches.values()))

    def handle(self, request: Request) -> Response:
        """Answer a files or batches request (auth already checked)."""
        match = _ROUTE.fullmatch(request.path)
        assert match is not None
        kind, item, action = match.groups()
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(request.query).items()}
        self.advance()
        if kind == "files":
            if action == "cancel":
                return _not_found(request).response()
            result = self._files(request.method, item, action, request, query)
        else:
            if action == "content":
                return _not_found(request).response()
            result = self._batches(request.method, item, action, request, query)
        return result.response() if isinstance(result, ApiError) else result

    # --- files -----------------------------------------------------------------------------

    def _files(
        self, method: str, file_id: str | None, action: str | None, request: Request, query: dict[str, str]
    ) -> Response | ApiError:
        if file_id is None:
            if method == "POST":
                return self._upload(request)
            if method == "GET":
                return self._list_files(query)
            return _method_not_allowed(request)
        stored = self.files.get(file_id)
        if action == "content":
            if method != "GET":
                return _method_not_allowed(request)
            if stored is None:
                return _no_file(file_id)
            return Response(200, stored.content, content_type="application/octet-stream")
        if method == "GET":
            return json_response(200, stored.to_object()) if stored else _no_file(file_id)
        if method == "DELETE":
            if not self.files.delete(file_id):
                return _no_file(file_id)
            return json_response(200, {"id": file_id, "object": "file", "deleted": True})
        return _method_not_allowed(request)

    def _upload(self, request: Request) -> Response | ApiError:
        try:
            fields = parse_multipart(request.body, request.headers.get("content-type", ""))
        except ValueError as exc:
            return ApiError(400, f"Invalid file upload: {exc}.")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in FILE_PURPOSES:
            return ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        if "file" not in fields:
            return ApiError(400, "Missing required parameter: 'file'.", param="file")
        filename, content = fields["file"]
        stored = self.files.add(filename or "upload", purpose, content)
        self._stats.batch["files"] += 1
        return json_response(200, stored.to_object())

    def _list_files(self, query: dict[str, str]) -> Response | ApiError:
        limit = _limit(query, default=10_000, most=10_000)
        if isinstance(limit, ApiError):
            return limit
        files = self.files.newest_first(query.get("purpose"))
        if query.get("order") == "asc":
            files.reverse()
        page = cursor_page(files, lambda f: f.id, query.get("after"), limit, lambda f: f.to_object())
        return json_response(200, page)

    # --- batches ---------------------------------------------------------------------------

    def _batches(
        self, method: str, batch_id: str | None, action: str | None, request: Request, query: dict[str, str]
    ) -> Response | ApiError:
        if batch_id is None:
            if method == "POST":
                return self._create(request)
            if method == "GET":
                limit = _limit(query, default=20, most=100)
                if isinstance(limit, ApiError):
                    return limit
                newest = list(reversed(self.batches.values()))
                page = cursor_page(newest, lambda b: b.id, query.get("after"), limit, lambda b: b.to_object())
                return json_response(200, page)
            return _method_not_allowed(request)
        batch = self.batches.get(batch_id)
        if action == "cancel":
            if method != "POST":
                return _method_not_allowed(request)
            if batch is None:
                return _no_batch(batch_id)
            if not batch.cancel(self._clock(), self._answer, self.files):
                return ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
            return json_response(200, batch.to_object())
        if method != "GET":
            return _method_not_allowed(request)
        return json_response(200, batch.to_object()) if batch else _no_batch(batch_id)

    def _create(self, request: Request) -> Response | ApiError:
        try:
            data = json.loads(request.body)
        except ValueError:
            return ApiError(400, "We could not parse the JSON body of your request.")
        if not isinstance(data, dict):
            return ApiError(400, "The body of your request must be a JSON object.")
        input_file_id = data.get("input_file_id")
        endpoint = data.get("endpoint")
        metadata = data.get("metadata")
        if not isinstance(input_file_id, str):
            return ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id")
        if endpoint not in ENDPOINTS:
            message = f"Invalid value for 'endpoint': {endpoint!r}. Supported: {ENDPOINTS}."
            return ApiError(400, message, param="endpoint")
        if data.get("completion_window") != "24h":
            message = "Invalid value for 'completion_window': only '24h' is supported."
            return ApiError(400, message, param="completion_window")
        if metadata is not None and not _valid_metadata(metadata):
            message = "Invalid 'metadata': at most 16 string keys (64 characters) and string values (512 characters)."
            return ApiError(400, message, param="metadata")
        stored = self.files.get(input_file_id)
        if stored is None:
            return _no_file(input_file_id, param="input_file_id")
        if stored.purpose != "batch":
            message = f"The input file {input_file_id} must have purpose 'batch', not {stored.purpose!r}."
            return ApiError(400, message, param="input_file_id")

        lines, model, failure = validate_input(stored.content, endpoint)
        limit = self.config.batch_enqueued_token_limit
        if not failure and limit is not None:
            tokens = sum(line.tokens for line in lines)
            # Batches found invalid never hold tokens; the others do until they leave validating/in_progress.
            enqueued = sum(
                b.tokens for b in self.batches.values() if b.model == model and b.status in _ENQUEUED and not b.failure
            )
            if enqueued + tokens > limit:
                message = (
                    f"Enqueued token limit reached for {model} in organization org-simulator. "
                    f"Limit: {limit:,} enqueued tokens. "
                    "Please try again once some in_progress batches have been completed."
                )
                failure = [{"code": "token_limit_exceeded", "message": message, "param": None, "line": None}]
        batch_id = f"batch_sim{next(self._ids):06d}"
        request_fields = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        batch = Batch(batch_id, request_fields, lines, model, failure, self.config, self._clock(), time.time())
        self.batches[batch_id] = batch
        self._stats.batch["batches"] += 1
        # The batch answers as created, validating, even with a zero turnaround: as OpenAI's does.
        return json_response(200, batch.to_object())


def _valid_metadata(metadata: Any) -> bool:
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return False
    return all(
        isinstance(key, str) and len(key) <= 64 and isinstance(value, str) and len(value) <= 512
        for key, value in metadata.items()
    )


def _limit(query: dict[str, str], default: int, most: int) -> int | ApiError:
    text = query.get("limit")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        return ApiError(400, f"Invalid 'limit': must be an integer between 1 and {most}.", param="limit")
    return value


def _no_file(file_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such File object: {file_id}", param=param)


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")


def _not_found(request: Request) -> ApiError:
    message = f"Unknown request URL: {request.method} {request.path}. Please check the URL for typos."
    return ApiError(404, message, code="unknown_url")


def _method_not_allowed(request: Request) -> ApiError:
    return ApiError(405, f"Method {request.method} not allowed on {request.path}", code="method_not_allowed")
