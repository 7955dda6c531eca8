"""Configuration of the simulator: one frozen dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = ["DEFAULT_LABELS", "FAIL_STATUSES", "RATE_LIMIT_STYLES", "SimulatorConfig"]

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

#: How a 429 tells the client when to retry; see :class:`SimulatorConfig` for each.
RATE_LIMIT_STYLES: tuple[str, ...] = (
    "openai",
    "retry-after",
    "retry-after-date",
    "retry-after-ms",
    "reset",
    "litellm",
    "body",
    "none",
)

Mode = Literal["label", "echo"]
RateLimitStyle = Literal[
    "openai", "retry-after", "retry-after-date", "retry-after-ms", "reset", "litellm", "body", "none"
]

# Faults drawn by the one uniform draw, in the order of their thresholds. New
# faults go last, so that configurations without them draw exactly as before.
_DRAWN_FAULTS = (
    "fail_rate",
    "rate_limit_rate",
    "hang_rate",
    "malformed_rate",
    "drip_rate",
    "html_rate",
    "empty_rate",
    "empty_object_rate",
    "huge_rate",
)


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
        Share of requests answered with a spurious 429 (a retry hint of 1 s),
        independently of `rpm` and `tpm`.
    rate_limit_style : str
        How every 429 (from the buckets, spurious, or `always_429`) hints
        when to retry, and which rate-limit headers a 200 carries:

        - ``"openai"``: ``retry-after`` (whole seconds) and ``retry-after-ms``
          plus OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
          for the configured buckets, on 429s and 200s; a spurious 429 only
          adds ``retry-after: 1`` to the bucket headers.
        - ``"retry-after"``: only ``retry-after: <whole seconds>``.
        - ``"retry-after-date"``: only ``retry-after: <HTTP date>``, rounded up
          to the next whole second so that it is never early.
        - ``"retry-after-ms"``: only ``retry-after-ms: <milliseconds>``.
        - ``"reset"``: only ``x-ratelimit-reset-requests`` and
          ``x-ratelimit-reset-tokens`` in OpenAI's duration format (``"150ms"``,
          ``"1s"``, ``"6m0s"``): each bucket's own wait (``"0s"`` for a bucket
          that is not short or not configured), so the larger one is the wait.
        - ``"litellm"``: only ``llm_provider-retry-after: <whole seconds>``, as
          LiteLLM's proxy passes an upstream 429 on; its 200s carry
          ``x-ratelimit-limit-requests`` and ``x-ratelimit-remaining-requests``
          when `rpm` is set.
        - ``"body"``: no header; the error message ends with ``Please try
          again in 1.234s.`` (OpenAI's duration format).
        - ``"none"``: no hint at all.

        Only ``"openai"`` (its bucket 429s) and ``"body"`` put the wait in the
        message; only ``"openai"`` and ``"litellm"`` send rate-limit headers on 200s.
    always_429 : bool
        Answer every valid chat request with a 429 in `rate_limit_style` (a
        retry hint of 1 s) and never admit it: "429 forever". The buckets are
        not charged. Counted as the fault ``"always_429"``.
    hang_rate : float
        Share of requests that sleep `hang_seconds` before answering, to
        exercise client timeouts; 1 hangs every request.
    hang_seconds : float
        Duration of a hang.
    malformed_rate : float
        Share of requests answered with a 200 whose body is truncated JSON.
    drip_rate : float
        Share of requests answered with a 200 whose headers arrive at once and
        whose (well-formed) body then trickles one byte every `drip_interval`
        seconds: a per-read timeout never fires, yet the request takes
        ``len(body) * drip_interval`` seconds. Counted a success only once the
        last byte is written.
    drip_interval : float
        Seconds between two bytes of a drip-fed body.
    html_rate : float
        Share of requests answered with a 200 ``text/html`` page, like a
        proxy's sign-in page.
    empty_rate : float
        Share of requests answered with a 200 ``application/json`` whose body is empty.
    empty_object_rate : float
        Share of requests answered with a 200 whose body is ``{}``.
    huge_rate : float
        Share of requests answered with a 200 whose body is `huge_bytes` long:
        the well-formed answer padded with JSON whitespace, streamed in chunks
        so the simulator's memory stays small. Counted a success only once the
        last byte is written.
    huge_bytes : int
        Length of a huge body; an answer longer than this is sent as it is.
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
    batch_turnaround : float
        Seconds from a batch's creation to its completion on the server's
        clock: the first tenth validating, the next eight tenths in progress
        (lines answered evenly over it), the last tenth finalizing. A
        cancelled batch spends a tenth of it cancelling.
    batch_line_fail_rate : float
        Share of batch lines answered with a 500 error line (error file).
    batch_expire_after : float
        Seconds after its creation when an unfinished batch expires: lines
        answered so far go to the output file, the others to the error file
        with code ``batch_expired``. OpenAI's window is 24 h.
    batch_enqueued_token_limit : int, optional
        Most prompt tokens per model in batches validating or in progress; a
        batch that would exceed it fails with ``token_limit_exceeded``, as
        OpenAI's enqueued-token limit does. ``None`` means unlimited.
    seed : int, optional
        Seed of the random draws (faults and latency); ``None`` seeds from
        the operating system. Each batch draws from its own generator, seeded
        by this and its id, so batches do not shift the chat draws.

    Raises
    ------
    ValueError
        If a value is out of range, or the fault rates (all but
        `invalid_json_rate` and `batch_line_fail_rate`) add up to more than 1.

    Notes
    -----
    A chat request goes through, in order: the API key (401), the body (400),
    the model (404), the context length (400), the rate limits (429; an admitted request is charged one
    request and its prompt tokens plus ``max_tokens``, or plus its completion
    tokens if absent), one seeded draw of at most one fault, the latency (or
    the hang), then the answer. With `always_429` every request stops at the
    rate limits, uncharged. Spurious 429s and failures are answered after
    the charge, like a provider's. A hung request is answered normally once
    the hang is over; an answer whose client has gone (timed out) is not
    written and not counted as a success, so ``success_by_prompt`` only counts
    answers a client could read (a drip-fed or huge body counts once its last
    byte is written).

    A batch line (``/v1/batches``) gets the answer a synchronous request would,
    with the same 404 and 400 checks, but skips the API key (checked on the
    batch routes instead), the rate limits, the drawn faults and the latency:
    it draws only `batch_line_fail_rate` and `invalid_json_rate`, from the
    batch's own generator. Its successes count in ``successes`` and
    ``success_by_prompt`` like synchronous ones.
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
    rate_limit_style: RateLimitStyle = "openai"
    always_429: bool = False
    drip_rate: float = 0.0
    drip_interval: float = 1.0
    html_rate: float = 0.0
    empty_rate: float = 0.0
    empty_object_rate: float = 0.0
    huge_rate: float = 0.0
    huge_bytes: int = 200_000_000
    api_key: str | None = None
    models: tuple[str, ...] = ()
    max_context_tokens: int | None = None
    batch_turnaround: float = 1.0
    batch_line_fail_rate: float = 0.0
    batch_expire_after: float = 86_400.0
    batch_enqueued_token_limit: int | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        # Accept lists from callers and argparse, but store tuples so the config stays hashable.
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "models", tuple(self.models))

        if self.mode not in ("label", "echo"):
            raise ValueError(f"mode must be 'label' or 'echo', got {self.mode!r}")
        if not self.labels:
            raise ValueError("labels must not be empty")
        for name in ("latency", "latency_sd", "hang_seconds", "batch_turnaround"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("drip_interval", "batch_expire_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.latency_sd > 0 and self.latency == 0:
            raise ValueError("latency_sd > 0 needs latency > 0 (a lognormal has a positive mean)")
        for name in ("rpm", "tpm", "batch_enqueued_token_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if not (math.isfinite(self.burst_seconds) and self.burst_seconds > 0):
            raise ValueError(f"burst_seconds must be > 0, got {self.burst_seconds!r}")
        if self.fail_status not in FAIL_STATUSES:
            raise ValueError(f"fail_status must be one of {FAIL_STATUSES}, got {self.fail_status!r}")
        if type(self.huge_bytes) is not int or self.huge_bytes < 1:
            raise ValueError(f"huge_bytes must be an integer >= 1, got {self.huge_bytes!r}")
        if self.rate_limit_style not in RATE_LIMIT_STYLES:
            raise ValueError(f"rate_limit_style must be one of {RATE_LIMIT_STYLES}, got {self.rate_limit_style!r}")
        if not isinstance(self.always_429, bool):
            raise ValueError(f"always_429 must be a bool, got {self.always_429!r}")
        for name in (*_DRAWN_FAULTS, "invalid_json_rate", "batch_line_fail_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.fault_rate > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {self.fault_rate:g}, more than 1")

    @property
    def fault_rate(self) -> float:
        """Share of requests that draw any fault."""
        return sum(getattr(self, name) for name in _DRAWN_FAULTS)

    @property
    def drawn_faults(self) -> list[tuple[str, float]]:
        """The faults of the one uniform draw and their rates, in draw order:
        ``("fail", fail_rate)``, ``("rate_limit", ...)``... ``("huge", huge_rate)``."""
        return [(name.removesuffix("_rate"), getattr(self, name)) for name in _DRAWN_FAULTS]
