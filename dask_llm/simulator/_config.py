"""Configuration of the simulator: one frozen dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = ["DEFAULT_LABELS", "FAIL_STATUSES", "SimulatorConfig"]

#: Labels answered in ``mode="label"``: plausible cloud-service categories, so that
#: demos read like a real classification task.
DEFAULT_LABELS: tuple[str, ...] = (
    "compute",
    "storage",
    "database",
    "networking",
    "identity",
    "billing",
)

#: Status codes a simulated server failure may use; all are retryable for the openai client.
FAIL_STATUSES: tuple[int, ...] = (500, 502, 503)

Mode = Literal["label", "echo"]


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Behaviour of the OpenAI-compatible simulator.

    Parameters
    ----------
    mode : {"label", "echo"}
        ``"label"`` answers one of `labels`, chosen by a stable hash of the
        messages; ``"echo"`` answers the last user message unchanged.
    labels : tuple of str
        Candidate answers in label mode.
    latency : float
        Mean response time in seconds, spent in ``asyncio.sleep``.
    latency_sd : float
        Standard deviation of the response time; 0 means constant, otherwise
        the latency is lognormal with mean `latency` and this deviation.
    rpm, tpm : int, optional
        Requests and tokens per minute allowed, enforced with token buckets
        like a provider does. ``None`` means unlimited.
    burst_seconds : float
        Bucket capacity in seconds of refill: a limit of 600 rpm with 5 s of
        burst admits 50 requests at once (never fewer than one request).
    fail_rate : float
        Share of requests answered with `fail_status` (a retryable server error).
    fail_status : int
        Status code of simulated failures: 500, 502 or 503.
    rate_limit_rate : float
        Share of requests answered with a spurious 429 (``retry-after: 1``),
        independently of `rpm` and `tpm`.
    hang_rate : float
        Share of requests that sleep `hang_seconds` before answering, to
        exercise client timeouts.
    hang_seconds : float
        Duration of a hang.
    malformed_rate : float
        Share of requests answered with a 200 whose body is truncated JSON.
    invalid_json_rate : float
        Share of requests with a JSON ``response_format`` whose *answer* (the
        message content, in a well-formed response) is cut in half, so it is
        not valid JSON: the model misbehaving, not the transport. Drawn
        separately from the other faults, only for such requests.
    api_key : str, optional
        When set, requests must carry it (``Authorization: Bearer`` or
        ``api-key``), otherwise they get a 401.
    models : tuple of str
        When non-empty, requests for any other model get a 404.
    max_context_tokens : int, optional
        When set, a request whose prompt has more tokens gets a 400
        ``context_length_exceeded``, as a provider answers a row that is too
        long: an error retrying cannot fix.
    seed : int, optional
        Seed of the random draws (faults and latency); ``None`` seeds from
        the operating system.

    Raises
    ------
    ValueError
        If a value is out of range, or the fault rates add up to more than 1.

    Notes
    -----
    A chat request goes through, in order: the API key (401), the body (400),
    the model (404), the context length (400), the rate limits (429; an admitted request is charged one
    request and its prompt tokens plus ``max_tokens``, or plus its completion
    tokens if absent), one seeded draw of at most one fault, the latency (or
    the hang), then the answer. Spurious 429s and failures are answered after
    the charge, like a provider's. A hung request is answered normally once
    the hang is over; an answer whose client has gone (timed out) is not
    written and not counted as a success, so ``success_by_prompt`` only counts
    answers a client could read.
    """

    mode: Mode = "label"
    labels: tuple[str, ...] = DEFAULT_LABELS
    latency: float = 0.0
    latency_sd: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    burst_seconds: float = 5.0
    fail_rate: float = 0.0
    fail_status: int = 500
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    malformed_rate: float = 0.0
    invalid_json_rate: float = 0.0
    api_key: str | None = None
    models: tuple[str, ...] = ()
    max_context_tokens: int | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        # Accept lists from callers and argparse, but store tuples so the config stays hashable.
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "models", tuple(self.models))

        if self.mode not in ("label", "echo"):
            raise ValueError(f"mode must be 'label' or 'echo', got {self.mode!r}")
        if not self.labels:
            raise ValueError("labels must not be empty")
        for name in ("latency", "latency_sd", "hang_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.latency_sd > 0 and self.latency == 0:
            raise ValueError("latency_sd > 0 needs latency > 0 (a lognormal has a positive mean)")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if not (math.isfinite(self.burst_seconds) and self.burst_seconds > 0):
            raise ValueError(f"burst_seconds must be > 0, got {self.burst_seconds!r}")
        if self.fail_status not in FAIL_STATUSES:
            raise ValueError(f"fail_status must be one of {FAIL_STATUSES}, got {self.fail_status!r}")
        for name in ("fail_rate", "rate_limit_rate", "hang_rate", "malformed_rate", "invalid_json_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.fault_rate > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {self.fault_rate:g}, more than 1")

    @property
    def fault_rate(self) -> float:
        """Share of requests that draw any fault."""
        return self.fail_rate + self.rate_limit_rate + self.hang_rate + self.malformed_rate
