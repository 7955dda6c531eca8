"""How a 429 tells the client when to retry, in the styles providers and proxies use.

Clients and libraries read different hints: OpenAI sends ``retry-after``,
``retry-after-ms`` and ``x-ratelimit-*``; plain HTTP servers ``retry-after``
in seconds or as a date; LiteLLM's proxy prefixes the upstream header with
``llm_provider-``; some only say it in the message. Each style sends one kind,
so a test can tell which one a client obeys.
"""

from __future__ import annotations

import email.utils
import math
import time

from ._http import Response, error_body, json_response
from ._ratelimit import format_duration

__all__ = ["success_headers", "too_many_requests"]


def success_headers(style: str, bucket_headers: dict[str, str]) -> dict[str, str]:
    """Return the rate-limit headers a 200 (or a server error) carries in `style`.

    Parameters
    ----------
    style : str
        One of :data:`~dask_llm.simulator._config.RATE_LIMIT_STYLES`.
    bucket_headers : dict of str to str
        OpenAI's ``x-ratelimit-*`` headers for the configured buckets.

    Returns
    -------
    dict of str to str
        All of them for ``"openai"``, the requests limit and remaining for
        ``"litellm"`` (as LiteLLM's proxy sends), none otherwise.
    """
    if style == "openai":
        return dict(bucket_headers)
    if style == "litellm":
        names = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests")
        return {name: bucket_headers[name] for name in names if name in bucket_headers}
    return {}


def too_many_requests(
    style: str,
    model: str,
    wait: float,
    resets: tuple[float, float],
    bucket_headers: dict[str, str],
    simulated: bool,
) -> Response:
    """Return a 429 whose retry hint is `wait` seconds, written in `style`.

    Parameters
    ----------
    style : str
        One of :data:`~dask_llm.simulator._config.RATE_LIMIT_STYLES`.
    model : str
        The model named in the message.
    wait : float
        Seconds until the request would be admitted.
    resets : tuple of float
        Seconds until the requests bucket and the tokens bucket would admit it,
        for the ``"reset"`` style; their maximum is `wait`.
    bucket_headers : dict of str to str
        OpenAI's ``x-ratelimit-*`` headers for the configured buckets (``"openai"`` style only).
    simulated : bool
        Whether the 429 is not the buckets' (a spurious one, or ``always_429``):
        its ``"openai"`` form is ``retry-after`` alone, as the simulator always sent it.

    Returns
    -------
    Response
        A 429 with an OpenAI error body, type ``"requests"``, code ``"rate_limit_exceeded"``.
    """
    seconds = str(math.ceil(wait))
    headers: dict[str, str] = {}
    hint_in_message = False
    if style == "openai":
        headers.update(bucket_headers)
        headers["retry-after"] = seconds
        if not simulated:
            headers["retry-after-ms"] = str(math.ceil(wait * 1000))
            hint_in_message = True
    elif style == "retry-after":
        headers["retry-after"] = seconds
    elif style == "retry-after-date":
        # A date has whole seconds: round up, so that the client never comes back early.
        headers["retry-after"] = email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)
    elif style == "retry-after-ms":
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
    elif style == "reset":
        headers["x-ratelimit-reset-requests"] = format_duration(resets[0])
        headers["x-ratelimit-reset-tokens"] = format_duration(resets[1])
    elif style == "litellm":
        headers["llm_provider-retry-after"] = seconds
    elif style == "body":
        hint_in_message = True

    if simulated and style == "openai":
        message = "Rate limit reached (simulated)."
    else:
        message = f"Rate limit reached for {model}{' (simulated)' if simulated else ''}."
        if hint_in_message:
            message += f" Please try again in {format_duration(wait)}."
    return json_response(429, error_body(message, "requests", "rate_limit_exceeded"), headers)
