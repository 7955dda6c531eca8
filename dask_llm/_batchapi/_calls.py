"""Calls to the files and batches routes: bounded, retried when transient, and
turned into dask-llm's errors when not.

Every call runs inside :func:`~dask_llm._attempt.bounded`, so a server that
drip-feeds an answer cannot hold a thread beyond the time given, and every
wait between calls is a :func:`pause` that a stopping run cuts short.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import openai

from .._calls._attempt import bounded
from .._calls._client import Kind, classify, get_client
from .._config import Endpoint, RetryPolicy
from .._errors import AuthenticationError, EndpointError

__all__ = ["ATTEMPTS", "Stop", "batch_client", "call", "never", "pause"]

T = TypeVar("T")

#: A callable the caller passes to say "stop now"; polled between calls.
Stop = Callable[[], bool]

#: Attempts per control call (list, create, retrieve, upload...) before its failure is raised.
ATTEMPTS = 5
#: Longest a pause sleeps before it looks at ``should_stop`` again.
SLICE = 0.05

# Back-off between attempts of one call: a few seconds in all, not the row policy's minutes.
_POLICY = RetryPolicy(max_attempts=ATTEMPTS, backoff_initial=0.5, backoff_max=8.0, max_retry_after=30.0)
_rng = random.Random()


def never() -> bool:
    """The default ``should_stop``: never stop."""
    return False


def pause(seconds: float, should_stop: Stop) -> bool:
    """Sleep ``seconds``, looking at ``should_stop`` every :data:`SLICE`; whether it said stop."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        if should_stop():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(SLICE, left))


def batch_client(endpoint: Endpoint) -> openai.OpenAI:
    """The process's client for the files and batches routes of ``endpoint``.

    ``AzureOpenAI(azure_deployment=...)`` puts the deployment into its base
    URL (``/openai/deployments/<name>``) for *every* route, so ``/files``
    and ``/batches`` would miss; a batch names its deployment in each line's
    ``body.model`` instead. So the Azure client used here has none.
    """
    if endpoint.is_azure and endpoint.azure_deployment is not None:
        endpoint = replace(endpoint, azure_deployment=None)
    return get_client(endpoint)


def call(
    endpoint: Endpoint,
    what: str,
    fn: Callable[[openai.OpenAI], T],
    *,
    should_stop: Stop = never,
    timeout: float | None = None,
    max_bytes: int | None = None,
    recover: Callable[[openai.OpenAI], T | None] | None = None,
) -> T:
    """Run ``fn(client)`` as one bounded attempt, retrying transient failures.

    Parameters
    ----------
    endpoint : Endpoint
        Where the call goes.
    what : str
        What the call does, for error messages ("creating a batch").
    fn : callable
        Makes the call with the client it is given.
    should_stop : callable
        Cuts the back-off between attempts short.
    timeout, max_bytes : optional
        Bounds of one attempt; default the endpoint's ``timeout`` and
        ``max_response_bytes`` (uploads and downloads pass their own).
    recover : callable, optional
        Called before a retry: a call that is not idempotent (creating a
        batch) may have succeeded although its answer was lost; if
        ``recover`` finds what it made, that is returned instead of calling again.

    Raises
    ------
    AuthenticationError
        401/403, or a 429 ``insufficient_quota``.
    EndpointError
        Any other failure that retrying cannot fix, or one still there after
        :data:`ATTEMPTS` attempts (or when the run is stopping).
    """
    seconds = endpoint.timeout if timeout is None else timeout
    limit = endpoint.max_response_bytes if max_bytes is None else max_bytes
    client = batch_client(endpoint)
    for attempt in range(1, ATTEMPTS + 1):
        if attempt > 1 and recover is not None:
            found = _quietly(recover, client, seconds, limit)
            if found is not None:
                return found
        try:
            with bounded(seconds, limit) as bound:
                try:
                    return fn(client)
                except Exception as exc:
                    # What the guard cut short, for classify() to tell a timeout from "too large".
                    exc.__dict__["_dask_llm_attempt"] = bound
                    raise
        except Exception as exc:
            failure = classify(exc, seconds)
            if not failure.retryable or attempt == ATTEMPTS:
                raise _error(endpoint, what, failure.kind, failure.message) from exc
            if failure.kind is Kind.RATE_LIMITED:
                delay = _POLICY.rate_limit_delay(attempt, failure.retry_after, _rng)
            else:
                delay = _POLICY.delay(attempt, failure.retry_after, _rng)
            if pause(delay, should_stop):
                raise _error(endpoint, what, failure.kind, failure.message + " (the run is stopping)") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _quietly(fn: Callable[[openai.OpenAI], T | None], client: openai.OpenAI, seconds: float, limit: int) -> T | None:
    # A look-up before a retry: if it fails too, the retry itself will say why.
    try:
        with bounded(seconds, limit):
            return fn(client)
    except Exception:
        return None


def _error(endpoint: Endpoint, what: str, kind: Kind, message: str) -> EndpointError:
    text = f"{what} at {endpoint.display_url} failed: {message}"
    if kind is Kind.AUTH:
        return AuthenticationError(text)
    if kind is Kind.NOT_FOUND:
        # A server without a Batch API (vLLM, Ollama) answers 404 to /files and /batches.
        return EndpointError(f"{text} (does the endpoint serve the Batch API, and is the id from this account?)")
    return EndpointError(text)
