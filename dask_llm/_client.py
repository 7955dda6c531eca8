"""One chat-completion attempt through the official ``openai`` client, and
the classification of what went wrong.

The client object holds a connection pool and cannot be pickled, so it is
built on the worker from the picklable :class:`Endpoint`, once per process,
and shared by every thread and partition there. Its own retries are off:
dask-llm retries, so that back-off, the shared cool-down and the error column
all see every failure.
"""

from __future__ import annotations

import email.utils
import enum
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai

from ._config import Endpoint

__all__ = ["Completion", "Failure", "Kind", "classify", "complete", "get_client"]

_clients: dict[Endpoint, openai.OpenAI] = {}
_clients_lock = threading.Lock()


def get_client(endpoint: Endpoint) -> openai.OpenAI:
    """The process's client for ``endpoint``, built on first use."""
    client = _clients.get(endpoint)
    if client is None:
        with _clients_lock:
            client = _clients.get(endpoint)
            if client is None:
                client = _clients[endpoint] = _build(endpoint)
    return client


def _build(ep: Endpoint) -> openai.OpenAI:
    common: dict[str, Any] = dict(
        api_key=ep.api_key,
        organization=ep.organization,
        project=ep.project,
        timeout=ep.timeout,
        max_retries=0,
    )
    if ep.is_azure:
        return openai.AzureOpenAI(
            azure_endpoint=ep.azure_endpoint,
            azure_deployment=ep.azure_deployment,
            api_version=ep.api_version,
            **common,
        )
    return openai.OpenAI(base_url=ep.base_url, **common)


@dataclass(frozen=True)
class Completion:
    """A well-formed answer."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    headers: Mapping[str, str]


class MalformedResponse(Exception):
    """A 200 whose body is not a chat completion; worth a retry."""


def complete(endpoint: Endpoint, request: Mapping[str, Any]) -> Completion:
    """Make one attempt. Raises the openai client's exception, or
    :class:`MalformedResponse`, on failure."""
    raw = get_client(endpoint).chat.completions.with_raw_response.create(**request)
    try:
        parsed = raw.parse()
        choice = parsed.choices[0]
        text = choice.message.content
        usage = parsed.usage
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # json.JSONDecodeError is a ValueError; a body that parses into the
        # wrong shape shows up as the attribute or index errors.
        raise MalformedResponse(f"malformed response body ({type(exc).__name__}: {exc})") from None
    if not isinstance(text, str):
        raise MalformedResponse("response has no message content")
    return Completion(
        text=text,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        finish_reason=choice.finish_reason,
        headers=raw.headers,
    )


class Kind(enum.Enum):
    """What a failed attempt means for the row and for the job."""

    RATE_LIMITED = "rate_limited"  # retry after a cool-down shared by everyone
    TRANSIENT = "transient"  # retry this row with back-off
    CONNECTION = "connection"  # transient, but counts toward "unreachable"
    ROW = "row"  # this row cannot succeed (e.g. 400 context too long)
    AUTH = "auth"  # no row can succeed: credentials or quota
    NOT_FOUND = "not_found"  # no row can succeed: model or path wrong


@dataclass(frozen=True)
class Failure:
    kind: Kind
    message: str
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in (Kind.RATE_LIMITED, Kind.TRANSIENT, Kind.CONNECTION)


def classify(exc: BaseException) -> Failure:
    """Map an attempt's exception to a :class:`Failure`.

    Anything not recognised as an API or transport failure is re-raised: a
    bug in dask-llm should not be filed away as row data.
    """
    name = type(exc).__name__
    if isinstance(exc, MalformedResponse):
        return Failure(Kind.TRANSIENT, f"MalformedResponse: {exc}")
    if isinstance(exc, openai.APITimeoutError):
        return Failure(Kind.TRANSIENT, f"{name}: no answer within the timeout")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return Failure(Kind.CONNECTION, f"{name}: {exc}{detail}")
    if isinstance(exc, openai.APIResponseValidationError):
        return Failure(Kind.TRANSIENT, f"MalformedResponse: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status, headers = exc.status_code, exc.response.headers
        msg = f"{name} {status}: {_error_message(exc)}"
        code = _error_code(exc)
        if status == 429:
            # OpenAI answers 429 both for "slow down" and for "out of credit";
            # only the first one is worth waiting for.
            if code == "insufficient_quota":
                return Failure(Kind.AUTH, msg, headers=headers)
            return Failure(Kind.RATE_LIMITED, msg, retry_after_seconds(headers), headers)
        if status in (401, 403):
            return Failure(Kind.AUTH, msg, headers=headers)
        if status == 404:
            return Failure(Kind.NOT_FOUND, msg, headers=headers)
        if status in (408, 409) or status >= 500:
            return Failure(Kind.TRANSIENT, msg, retry_after_seconds(headers), headers)
        return Failure(Kind.ROW, msg, headers=headers)
    raise exc


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc.message)


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code") is not None:
            return str(inner["code"])
    return None


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The provider's ``retry-after-ms`` / ``retry-after`` (seconds or an
    HTTP date), in seconds; ``None`` when absent or unreadable."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None

