"""Configuration value objects: where to send requests and how to retry them.

Both are small frozen dataclasses: hashable (the per-process client cache is
keyed by the endpoint), picklable (they travel inside the task graph to worker
processes) and cheap to compare.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from urllib.parse import urlparse

from ._errors import ConfigError

__all__ = ["Endpoint", "RetryPolicy"]

#: Placeholder key for servers that need none (vLLM, Ollama, llama.cpp): the
#: openai client refuses to start without some key.
NO_KEY = "not-needed"


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
        Seconds one request may take before it is abandoned and retried.
    """

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str | None = None
    organization: str | None = None
    project: str | None = None
    timeout: float = 120.0

    @property
    def is_azure(self) -> bool:
        return self.azure_endpoint is not None

    @property
    def display_url(self) -> str:
        """Where requests go, for error messages."""
        return self.azure_endpoint or self.base_url or "https://api.openai.com/v1"

    def resolve(self) -> Endpoint:
        """Fill unset fields from the environment and check the result.

        Raises
        ------
        ConfigError
            No API key for OpenAI's own API, a malformed URL, or a bad timeout.
        """
        env = os.environ
        ep = self
        if ep.base_url is None and ep.azure_endpoint is None:
            if env.get("OPENAI_BASE_URL"):
                ep = replace(ep, base_url=env["OPENAI_BASE_URL"])
            elif env.get("AZURE_OPENAI_ENDPOINT"):
                ep = replace(ep, azure_endpoint=env["AZURE_OPENAI_ENDPOINT"])
        if ep.api_key is None:
            names = ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY") if ep.is_azure else ("OPENAI_API_KEY",)
            key = next((env[n] for n in names if env.get(n)), None)
            if key is None and ep.base_url is None:
                raise ConfigError(
                    f"no API key for {ep.display_url}: pass Endpoint(api_key=...) "
                    f"or set {' or '.join(names)}"
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
        return ep


@dataclass(frozen=True)
class RetryPolicy:
    """How a row's transient failures (429, 5xx, timeouts, resets, garbled
    responses) are retried: jittered exponential back-off that defers to the
    provider's ``Retry-After`` when it gives one.

    Parameters
    ----------
    max_attempts : int
        Calls per row at most, the first included.
    backoff_initial : float
        Upper bound of the first back-off, in seconds; it doubles per attempt.
    backoff_max : float
        Upper bound of any computed back-off.
    max_retry_after : float
        A provider's ``Retry-After`` longer than this is capped to it.
    """

    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_initial < 0 or self.backoff_max < 0:
            raise ConfigError("RetryPolicy back-off times must not be negative")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        "Full jitter" spreads the retries of many threads that failed together,
        so they do not return as one burst; a ``Retry-After`` is a floor, with a
        little jitter on top for the same reason.
        """
        if retry_after is not None and retry_after > 0:
            wait = min(retry_after, self.max_retry_after)
            return wait + rng.uniform(0, 0.1 * wait + 0.05)
        return rng.uniform(0, min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)))
