"""One chat-completion attempt through the official ``openai`` client, and
the classification of what went wrong.

The client object holds a connection pool and cannot be pickled, so it is
built on the worker from the picklable :class:`Endpoint` and shared by every
thread and partition of the process. The cache is small and least-recently
used; an evicted client is closed, so a process that meets many endpoints
(a notebook's successive runs) keeps no sockets open for the old ones.

The client's own retries are off: dask-llm retries, so that back-off, the
shared cool-down and the error column all see every failure. Its
connections go through :mod:`._attempt`'s guarded backend, which bounds each
attempt as a whole and lets a stopping run cut calls in flight short.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import enum
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai

from .._config import Endpoint
from ._attempt import Attempt, bounded, guard_client

__all__ = ["Completion", "Failure", "Kind", "classify", "complete", "get_client", "retry_hint"]

#: Clients kept per process; the least recently used beyond it is closed.
MAX_CLIENTS = 8

_clients: collections.OrderedDict[tuple[Endpoint, str | None], openai.OpenAI] = collections.OrderedDict()
_clients_lock = threading.Lock()


def get_client(endpoint: Endpoint) -> openai.OpenAI:
    """The process's client for ``endpoint``, built on first use."""
    key = (endpoint, endpoint.key())  # a rotated key in api_key_env gets a new client
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            _clients.move_to_end(key)
            return client
        client = _clients[key] = _build(endpoint, key[1])
        evicted = []
        while len(_clients) > MAX_CLIENTS:
            evicted.append(_clients.popitem(last=False)[1])
    for old in evicted:
        with contextlib.suppress(Exception):
            old.close()
    return client


def _build(ep: Endpoint, api_key: str | None) -> openai.OpenAI:
    common: dict[str, Any] = dict(
        api_key=api_key,
        organization=ep.organization,
        project=ep.project,
        timeout=ep.timeout,
        max_retries=0,
        http_client=_http_client(ep),
    )
    if ep.azure_endpoint is not None:
        return openai.AzureOpenAI(
            azure_endpoint=ep.azure_endpoint,
            azure_deployment=ep.azure_deployment,
            api_version=ep.api_version,
            **common,
        )
    return openai.OpenAI(base_url=ep.base_url, **common)


def _http_client(ep: Endpoint) -> Any:
    # The openai client's own defaults (connection limits, proxies from the
    # environment), with guarded connections.
    http = openai.DefaultHttpxClient(timeout=ep.timeout)
    guard_client(http)
    return http


@dataclass(frozen=True)
class Completion:
    """A well-formed answer."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    headers: Mapping[str, str]


class MalformedResponse(Exception):
    """A 200 whose body is not a chat completion; worth a retry.

    Attributes
    ----------
    sample : str
        The first 200 characters of the body, to show what came instead.
    """

    def __init__(self, message: str, sample: str = "") -> None:
        super().__init__(message)
        self.sample = sample


def complete(endpoint: Endpoint, request: Mapping[str, Any], stop: threading.Event | None = None) -> Completion:
    """Make one attempt, bounded by ``endpoint.timeout`` and
    ``endpoint.max_response_bytes`` and cut short when ``stop`` is set.

    Raises the openai client's exception, or :class:`MalformedResponse`, on
    failure; :func:`classify` turns either into a :class:`Failure`.
    """
    client = get_client(endpoint)
    with bounded(endpoint.timeout, endpoint.max_response_bytes, stop) as attempt:
        try:
            raw = client.chat.completions.with_raw_response.create(**request)
        except Exception as exc:
            exc.__dict__["_dask_llm_attempt"] = attempt
            raise
    try:
        parsed = raw.parse()
        choice = parsed.choices[0]
        text = choice.message.content
        usage = parsed.usage
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # json.JSONDecodeError is a ValueError (an empty body); an HTML page
        # parses into a str, and {} into an object whose fields are None,
        # which show up as the attribute, type or index errors.
        raise MalformedResponse(
            f"the answer is not a chat completion ({_content_type(raw)}; {type(exc).__name__})",
            _sample(raw),
        ) from None
    if not isinstance(text, str):
        raise MalformedResponse("the answer has no message content", _sample(raw))
    return Completion(
        text=text,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        finish_reason=choice.finish_reason,
        headers=raw.headers,
    )


def _content_type(raw: Any) -> str:
    return str(raw.headers.get("content-type", "no content type")).split(";")[0]


def _sample(raw: Any) -> str:
    try:
        body = raw.http_response.content
    except Exception:
        return ""
    text = body[:400].decode("utf-8", "replace")
    return " ".join(text.split())[:200] or "(empty body)"


class Kind(enum.Enum):
    """What a failed attempt means for the row and for the job."""

    RATE_LIMITED = "rate_limited"  # a wait, shared by everyone: not an attempt used
    TRANSIENT = "transient"  # retry this row with back-off
    MALFORMED = "malformed"  # transient, but an endpoint that only does this is broken
    TIMEOUT = "timeout"  # transient, likewise
    CONNECTION = "connection"  # transient, and counts toward "unreachable"
    ROW = "row"  # this row cannot succeed (e.g. 400 context too long)
    AUTH = "auth"  # no row can succeed: credentials or quota
    NOT_FOUND = "not_found"  # no row can succeed: model or path wrong
    STOPPED = "stopped"  # the run is stopping: the row is left for the next run


@dataclass(frozen=True)
class Failure:
    kind: Kind
    message: str
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None
    #: The first 200 characters of what the endpoint sent instead of an answer.
    sample: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in (Kind.RATE_LIMITED, Kind.TRANSIENT, Kind.MALFORMED, Kind.TIMEOUT, Kind.CONNECTION)


def classify(exc: BaseException, timeout: float | None = None) -> Failure:
    """Map an attempt's exception to a :class:`Failure`.

    Anything not recognised as an API or transport failure is re-raised: a
    bug in dask-llm should not be filed away as row data.
    """
    name = type(exc).__name__
    attempt: Attempt | None = exc.__dict__.get("_dask_llm_attempt") if hasattr(exc, "__dict__") else None
    reason = attempt.reason if attempt is not None else None
    if reason == "stopped":
        return Failure(Kind.STOPPED, "the run stopped before the answer came")
    if reason == "too large":
        limit = attempt.max_bytes if attempt is not None else 0
        return Failure(Kind.ROW, f"the answer is larger than {limit:,} bytes (Endpoint.max_response_bytes)")
    if reason == "deadline":
        within = f" within {timeout:g} s" if timeout else ""
        return Failure(Kind.TIMEOUT, f"APITimeoutError: no complete answer{within} (Endpoint.timeout)")
    if isinstance(exc, MalformedResponse):
        return Failure(Kind.MALFORMED, f"MalformedResponse: {exc}", sample=exc.sample)
    if isinstance(exc, openai.APITimeoutError):
        within = f" within {timeout:g} s" if timeout else ""
        return Failure(Kind.TIMEOUT, f"{name}: no answer{within}")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return Failure(Kind.CONNECTION, f"{name}: {exc}{detail}")
    if isinstance(exc, openai.APIResponseValidationError):
        return Failure(Kind.MALFORMED, f"MalformedResponse: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status, headers = exc.status_code, exc.response.headers
        message = _error_message(exc)
        msg = f"{name} {status}: {message}"
        code = _error_code(exc)
        if status == 429:
            # OpenAI answers 429 both for "slow down" and for "out of credit";
            # only the first one is worth waiting for.
            if code == "insufficient_quota":
                return Failure(Kind.AUTH, msg, headers=headers)
            return Failure(Kind.RATE_LIMITED, msg, retry_hint(headers, message), headers)
        if status in (401, 403):
            return Failure(Kind.AUTH, msg, headers=headers)
        if status == 404:
            return Failure(Kind.NOT_FOUND, msg, headers=headers)
        if status in (408, 409) or status >= 500:
            return Failure(Kind.TRANSIENT, msg, retry_hint(headers, message), headers)
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


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_TRY_AGAIN = re.compile(r"try again in\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s)\s*)+)", re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    """OpenAI's durations: ``"1s"``, ``"6m0s"``, ``"150ms"``, ``"1h2m3.5s"``."""
    parts = _DURATION.findall(text.replace(" ", ""))
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        return None
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_hint(headers: Mapping[str, str] | None, message: str = "") -> float | None:
    """Seconds the provider asks to wait, from every hint providers send, in
    order of precision: ``retry-after-ms``; ``retry-after`` (seconds or an
    HTTP date); "try again in 1.5s" in the message; LiteLLM's
    ``llm_provider-retry-after``; the shorter of OpenAI's
    ``x-ratelimit-reset-requests`` / ``-tokens``. ``None`` when there is none."""
    headers = headers or {}
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000.0)
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    found = _TRY_AGAIN.search(message or "")
    if found:
        seconds = parse_duration(found.group(1).strip())
        if seconds is not None:
            return seconds
    value = headers.get("llm_provider-retry-after")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
    resets = [
        parse_duration(headers[h]) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens") if h in headers
    ]
    positive = [r for r in resets if r is not None and r > 0]
    return min(positive) if positive else None
