"""A finished batch's results, one :class:`LineResult` per request.

An ended batch has up to two files: the *output* file (lines answered 200)
and the *error* file (lines answered with an error status, and, for an
expired batch, ``batch_expired`` lines for what never ran). A line in
neither did not run (a cancelled batch lists nothing for them). Each line
becomes one of:

- ``OK``: the answer's text and usage;
- ``RETRYABLE``: it ran and failed in a way another try may fix (5xx, 429,
  408/409, an answer that is not a chat completion);
- ``FINAL``: it ran and failed for good (400-like: context too long, bad
  parameters, unknown model);
- ``NOT_RUN``: it never ran (expired, cancelled, refused for the
  enqueued-token limit, or missing from the results). No attempt was used.

``RETRYABLE`` and ``NOT_RUN`` lines are the ones to send again
(:attr:`LineResult.resubmit`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .._config import Endpoint
from .._errors import AuthenticationError, ModelNotFoundError
from ._calls import call
from ._config import BatchAPI
from ._refs import BatchState

__all__ = ["LineResult", "LineStatus", "parse_line", "results"]

#: A results file larger than this is refused: a guard against a broken server, not a real limit.
MAX_DOWNLOAD_BYTES = 8 * 1024**3
# Error codes of lines the batch never ran.
_NOT_RUN_CODES = ("batch_expired", "batch_cancelled")


class LineStatus(enum.Enum):
    """What became of one request of a batch."""

    OK = "ok"
    RETRYABLE = "retryable"
    FINAL = "final"
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class LineResult:
    """One request's outcome in a batch.

    Attributes
    ----------
    custom_id : str
        The request's id.
    status : LineStatus
        See the module docstring.
    text : str or None
        The answer (``choices[0].message.content``) when ``OK``.
    prompt_tokens, completion_tokens : int or None
        Usage billed for the line, when it was answered.
    finish_reason : str or None
        Why the model stopped, when ``OK``.
    error : str or None
        Why the line failed or did not run.
    status_code : int or None
        The line's HTTP status, when it ran.
    attempts : int
        Batches the request ran in: 1 for a line that ran, 0 for one that
        did not; :func:`~dask_llm._batchapi.run` adds follow-ups up.
    """

    custom_id: str
    status: LineStatus
    text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    status_code: int | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status is LineStatus.OK

    @property
    def resubmit(self) -> bool:
        """Whether sending the request again may succeed (a follow-up batch, or a synchronous retry)."""
        return self.status in (LineStatus.RETRYABLE, LineStatus.NOT_RUN)


def parse_line(record: Any) -> LineResult | None:
    """One line of an output or error file; ``None`` if it names no request."""
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        return None
    custom_id = record["custom_id"]
    response = record.get("response")
    error = record.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if status == 200:
            return _answer(custom_id, body)
        code = status if isinstance(status, int) else None
        message = _message(body) or (_message({"error": error}) if error else None) or "no message"
        retryable = code is None or code in (408, 409, 429) or code >= 500
        return LineResult(
            custom_id,
            LineStatus.RETRYABLE if retryable else LineStatus.FINAL,
            error=f"HTTP {code}: {message}" if code is not None else message,
            status_code=code,
            **_usage(body),
        )
    if isinstance(error, dict):
        code = error.get("code")
        message = f"{code}: {error.get('message') or 'no message'}" if code else str(error.get("message"))
        if code in _NOT_RUN_CODES:
            return LineResult(custom_id, LineStatus.NOT_RUN, error=message, attempts=0)
        # An error with no response: something on the provider's side, worth another try.
        return LineResult(custom_id, LineStatus.RETRYABLE, error=message)
    return LineResult(custom_id, LineStatus.RETRYABLE, error="the batch line has neither a response nor an error")


def _answer(custom_id: str, body: Any) -> LineResult:
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
    except (TypeError, KeyError, IndexError):
        text, choice = None, {}
    usage = _usage(body)
    if not isinstance(text, str):
        # As a synchronous call treats it: not a chat completion (or no content), worth another try.
        error = "MalformedResponse: the answer has no message content"
        return LineResult(custom_id, LineStatus.RETRYABLE, error=error, status_code=200, **usage)
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return LineResult(custom_id, LineStatus.OK, text=text, finish_reason=finish, status_code=200, **usage)


def _usage(body: Any) -> dict[str, Any]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return {"prompt_tokens": None, "completion_tokens": None}
    return {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}


def _message(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return None


def results(
    endpoint: Endpoint,
    state: BatchState,
    options: BatchAPI | None = None,
    *,
    custom_ids: Collection[str] | None = None,
) -> dict[str, LineResult]:
    """Download an ended batch's results and sort each request into a :class:`LineResult`.

    Parameters
    ----------
    endpoint : Endpoint
        Where the batch ran.
    state : BatchState
        The batch, ended (see :func:`~dask_llm._batchapi.wait`).
    options : BatchAPI, optional
        Gives the download timeout.
    custom_ids : collection of str, optional
        The requests the batch held, to report those in neither file as
        ``NOT_RUN``; default the ref's, else read from its input file.

    Returns
    -------
    dict of str to LineResult
        Every request of the batch.

    Raises
    ------
    BatchValidationError
        The batch failed validation: no line ran, and none would.
    ModelNotFoundError, AuthenticationError
        Every line that ran was answered 404 (or 401/403): no row can succeed.
    ValueError
        The batch has not ended.
    """
    options = options or BatchAPI()
    if not state.terminal:
        raise ValueError(f"batch {state.ref.batch_id} is still {state.status}; wait() for it first")
    state.raise_if_invalid()
    expected = custom_ids if custom_ids is not None else state.ref.custom_ids
    if expected is None:
        expected = _input_ids(endpoint, state, options)
    lines: dict[str, LineResult] = {}
    if not state.token_limited:
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id is None:
                continue
            for line in _read(endpoint, file_id, options, parse_line):
                # A line answered 200 stands, whatever else the files say of it.
                if line.custom_id not in lines or not lines[line.custom_id].ok:
                    lines[line.custom_id] = line
    _raise_if_endpoint_wide(state, lines)
    missing = _NOT_RUN_WHY.get(state.status, "not run: missing from the batch's results")
    for custom_id in expected:
        if custom_id not in lines:
            lines[custom_id] = LineResult(custom_id, LineStatus.NOT_RUN, error=missing, attempts=0)
    return lines


def _raise_if_endpoint_wide(state: BatchState, lines: dict[str, LineResult]) -> None:
    # Every line that ran refused alike for the model or the credentials: no row can escape it,
    # so the job stops with one error, as a synchronous run does, not with an error cell per row.
    ran = [line for line in lines.values() if line.status_code is not None]
    if not ran or any(line.ok for line in ran):
        return
    codes = {line.status_code for line in ran}
    first = ran[0].error
    if codes == {404}:
        raise ModelNotFoundError(f"every line of batch {state.ref.batch_id} ({state.ref.model}) was answered {first}")
    if codes <= {401, 403}:
        raise AuthenticationError(f"every line of batch {state.ref.batch_id} was answered {first}")


_NOT_RUN_WHY = {
    "expired": "not run: the batch expired before this request ran",
    "cancelled": "not run: the batch was cancelled before this request ran",
    "failed": "not run: the batch was refused (enqueued token limit)",
}


def _read(endpoint: Endpoint, file_id: str, options: BatchAPI, parse: Any) -> list[Any]:
    def fetch(client: Any) -> list[Any]:
        # Streamed and parsed line by line: a results file can be hundreds of MB, its parsed lines are small.
        parsed = []
        with client.files.with_streaming_response.content(file_id) as response:
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                try:
                    item = parse(json.loads(raw))
                except ValueError:
                    continue  # a torn line: its request is reported as not run, and sent again
                if item is not None:
                    parsed.append(item)
        return parsed

    return call(
        endpoint,
        f"downloading batch file {file_id}",
        fetch,
        timeout=options.transfer_timeout,
        max_bytes=MAX_DOWNLOAD_BYTES,
    )


def _input_ids(endpoint: Endpoint, state: BatchState, options: BatchAPI) -> list[str]:
    def custom_id(record: Any) -> str | None:
        return record.get("custom_id") if isinstance(record, dict) else None

    return _read(endpoint, state.ref.input_file_id, options, custom_id)
