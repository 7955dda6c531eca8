"""Configuration value objects: where to send requests and how to retry them.

Both are small frozen dataclasses: hashable (the per-process client cache is
keyed by the endpoint), picklable (they travel inside the task graph to worker
processes) and cheap to compare.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlparse, urlsplit, urlunsplit

from ._errors import ConfigError

__all__ = ["Endpoint", "RetryPolicy", "mask_url"]

#: Placeholder key for servers that need none (vLLM, Ollama, llama.cpp): the
#: openai client refuses to start without some key.
NO_KEY = "not-needed"


def mask_url(url: str) -> str:
    """``url`` with any password (or token) in its userinfo replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    shown = f"{user}:***@{host}" if parts.password is not None else f"***@{host}"
    return urlunsplit(parts._replace(netloc=shown))


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint: OpenAI itself, Azure OpenAI, or any server.

    Fields left as ``None`` are filled from the environment by :meth:`resolve`,
    which ``enrich()`` calls on the client machine, so worker machines need no
    environment variables of their own.

    Parameters
    ----------
    base_url : str, optional
        Root of the API, e.g. ``"http://localhost:8000/v1"`` for vLLM.
        Default: ``OPENAI_BASE_URL``, else OpenAI's own API.
    api_key : str, optional
        Default: ``OPENAI_API_KEY`` (``AZURE_OPENAI_API_KEY`` for Azure).
        Servers that need no key may leave it unset.
    azure_endpoint : str, optional
        ``https://<resource>.openai.azure.com``; setting it selects Azure.
        Default: ``AZURE_OPENAI_ENDPOINT`` when no ``base_url`` is given.
    azure_deployment : str, optional
        Azure deployment name; default the model name given to ``enrich``.
    api_version : str, optional
        Azure API version. Default: ``OPENAI_API_VERSION``, else ``"2024-10-21"``.
    organization, project : str, optional
        OpenAI organization and project headers.
    timeout : float
        Seconds one attempt may take in all (connecting, sending, and reading
        the whole answer) before it is abandoned and retried.
    api_key_env : str, optional
        The name of an environment variable that holds the key, read by each
        worker process from its own environment: the task graph then carries
        no secret (shared clusters, logs of the graph). Instead of ``api_key``.
    max_response_bytes : int
        An answer larger than this fails its attempt (an endpoint that sends
        hundreds of MB is broken; reading it would only fill the memory).
    """

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str | None = None
    organization: str | None = None
    project: str | None = None
    timeout: float = 120.0
    api_key_env: str | None = None
    max_response_bytes: int = 16 * 1024 * 1024

    def __repr__(self) -> str:
        # No key, and no credentials a URL may carry in its userinfo.
        shown = []
        for f in fields(self):
            if f.name == "api_key":
                continue
            value = getattr(self, f.name)
            if f.name in ("base_url", "azure_endpoint") and isinstance(value, str):
                value = mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Endpoint({', '.join(shown)})"

    @property
    def is_azure(self) -> bool:
        return self.azure_endpoint is not None

    @property
    def display_url(self) -> str:
        """Where requests go, for messages: any credentials in the URL masked."""
        return mask_url(self.azure_endpoint or self.base_url or "https://api.openai.com/v1")

    def key(self) -> str | None:
        """The API key to send: from ``api_key_env`` in this process's
        environment when set (workers read their own), else ``api_key``.

        Raises
        ------
        ConfigError
            ``api_key_env`` names a variable this process does not have.
        """
        if self.api_key_env is None:
            return self.api_key
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"the API key variable {self.api_key_env} is not set in this process "
                f"(pid {os.getpid()}); set it on every machine that calls the model"
            )
        return value

    def resolve(self) -> Endpoint:
        """Fill unset fields from the environment and check the result.

        Raises
        ------
        ConfigError
            No API key for OpenAI's own API, a malformed URL, or a bad timeout.
        """
        env = os.environ
        ep = self
        if ep.api_key_env is not None:
            if ep.api_key is not None:
                raise ConfigError("Endpoint takes api_key= or api_key_env=, not both")
            ep.key()  # the variable must exist here too: a typo fails now, not on every worker
        if ep.base_url is None and ep.azure_endpoint is None:
            if env.get("OPENAI_BASE_URL"):
                ep = replace(ep, base_url=env["OPENAI_BASE_URL"])
            elif env.get("AZURE_OPENAI_ENDPOINT"):
                ep = replace(ep, azure_endpoint=env["AZURE_OPENAI_ENDPOINT"])
        if ep.api_key is None and ep.api_key_env is None:
            names = ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY") if ep.is_azure else ("OPENAI_API_KEY",)
            key = next((env[n] for n in names if env.get(n)), None)
            if key is None and ep.base_url is None:
                raise ConfigError(
                    f"no API key for {ep.display_url}: pass Endpoint(api_key=...) or set {' or '.join(names)}"
                )
            ep = replace(ep, api_key=key or NO_KEY)
        if ep.is_azure and ep.api_version is None:
            ep = replace(ep, api_version=env.get("OPENAI_API_VERSION", "2024-10-21"))
        if ep.organization is None and env.get("OPENAI_ORG_ID"):
            ep = replace(ep, organization=env["OPENAI_ORG_ID"])
        if ep.project is None and env.get("OPENAI_PROJECT_ID"):
            ep = replace(ep, project=env["OPENAI_PROJECT_ID"])
        for url in (ep.base_url, ep.azure_endpoint):
            if url is not None and urlparse(url).scheme not in ("http", "https"):
                raise ConfigError(f"endpoint URL must start with http:// or https://, got {url!r}")
        if not ep.timeout > 0:
            raise ConfigError(f"Endpoint.timeout must be positive, got {ep.timeout!r}")
        if not (isinstance(ep.max_response_bytes, int) and ep.max_response_bytes > 0):
            raise ConfigError(f"Endpoint.max_response_bytes must be a positive integer, got {ep.max_response_bytes!r}")
        return ep


@dataclass(frozen=True)
class RetryPolicy:
    """How a row's failures are retried.

    Two kinds of failure are told apart:

    - **429 (rate limited) is a wait, not a failure.** It does not count
      toward ``max_attempts``. The row waits at least the provider's hint
      (``retry-after``, ``retry-after-ms``, ``x-ratelimit-reset-*``,
      LiteLLM's ``llm_provider-retry-after``, or "try again in 1.5s" in the
      message) and at least a jittered exponential back-off that grows with
      the row's consecutive 429s; after ``max_rate_limit_wait`` seconds of
      such waits in all, it gets the error ``rate limited for ...``.
    - **Other transient failures** (5xx, 408/409, timeouts, connection
      resets, malformed answers) are retried with jittered exponential
      back-off ("full jitter"), ``max_attempts`` calls in all.

    Parameters
    ----------
    max_attempts : int
        Calls per row at most for failures other than 429, the first included.
    backoff_initial : float
        Upper bound of the first back-off, in seconds; it doubles per retry.
    backoff_max : float
        Upper bound of any computed back-off.
    max_retry_after : float
        A provider's hint longer than this is capped to it.
    max_rate_limit_wait : float
        Seconds a row may spend waiting out 429s before it fails.
    """

    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    max_rate_limit_wait: float = 900.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_initial < 0 or self.backoff_max < 0:
            raise ConfigError("RetryPolicy back-off times must not be negative")
        if not self.max_rate_limit_wait >= 0:
            raise ConfigError(f"RetryPolicy.max_rate_limit_wait must be >= 0, got {self.max_rate_limit_wait!r}")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)
        of a failure other than 429.

        "Full jitter" spreads the retries of many threads that failed together,
        so they do not return as one burst; a ``Retry-After`` is a floor.
        """
        backoff = rng.uniform(0, min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)))
        if retry_after is not None and retry_after > 0:
            return max(backoff, min(retry_after, self.max_retry_after))
        return backoff

    def rate_limit_delay(self, streak: int, hint: float | None, rng: random.Random) -> float:
        """Seconds to wait after the row's ``streak``-th consecutive 429.

        At least the provider's hint (plus a little jitter, so threads told
        the same wait do not return as one burst) and at least a back-off
        drawn from the upper half of the exponential range, so that a small
        hint cannot make a row hammer an endpoint that keeps refusing.
        """
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (streak - 1))
        backoff = rng.uniform(0.5 * ceiling, ceiling)
        if hint is not None and hint > 0:
            hint = min(hint, self.max_retry_after)
            return max(backoff, hint + rng.uniform(0, 0.1 * hint + 0.05))
        return backoff
