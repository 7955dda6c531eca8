"""Provider-like rate limits: token buckets for requests and tokens per minute."""

from __future__ import annotations

import math

__all__ = ["RateLimits", "TokenBucket", "format_duration"]


def format_duration(seconds: float) -> str:
    """Format a duration the way OpenAI writes ``x-ratelimit-reset-*`` headers.

    Parameters
    ----------
    seconds : float
        A non-negative duration.

    Returns
    -------
    str
        Go-style duration rounded to the millisecond: ``"120ms"``, ``"1s"``,
        ``"1.5s"``, ``"6m0s"``, ``"1h0m0s"``; zero is ``"0s"``.
    """
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class TokenBucket:
    """A bucket refilling continuously at ``limit / 60`` per second.

    Parameters
    ----------
    limit : float
        Allowance per minute.
    capacity : float
        Most the bucket holds; the bucket starts full.
    now : float
        Current time in seconds, from a monotonic clock.

    Notes
    -----
    A cost larger than the capacity is admitted once the bucket is full and
    leaves it in debt, which later requests wait out: otherwise a request with a
    large ``max_tokens`` could never pass, yet the long-run rate still holds.
    """

    def __init__(self, limit: float, capacity: float, now: float) -> None:
        self.limit = limit
        self.capacity = capacity
        self.rate = limit / 60.0
        self.level = capacity
        self._updated = now

    def refill(self, now: float) -> None:
        """Add what accrued since the last update, up to the capacity."""
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self, cost: float) -> float:
        """Seconds until `cost` is admitted (0 if now); call :meth:`refill` first."""
        missing = min(cost, self.capacity) - self.level
        return max(0.0, missing / self.rate)

    def take(self, cost: float) -> None:
        """Charge `cost`, possibly into debt."""
        self.level -= cost

    def reset_time(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    def remaining(self) -> int:
        """Whole units that could be spent right now."""
        return max(0, math.floor(self.level))


class RateLimits:
    """Requests-per-minute and tokens-per-minute limits, charged together.

    Parameters
    ----------
    rpm, tpm : int, optional
        Limits per minute; ``None`` disables that bucket.
    burst_seconds : float
        Bucket capacity as seconds of refill.
    now : float
        Current time in seconds, from a monotonic clock.
    """

    def __init__(self, rpm: int | None, tpm: int | None, burst_seconds: float, now: float) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self._burst_seconds = burst_seconds
        #: Seconds each bucket (requests, tokens) needed at the last :meth:`admit`; 0 if it had enough.
        self.last_waits: tuple[float, float] = (0.0, 0.0)
        self.reset(now)

    @property
    def enabled(self) -> bool:
        """Whether any limit is configured."""
        return self.requests is not None or self.tokens is not None

    def reset(self, now: float) -> None:
        """Refill both buckets completely."""
        self.requests = self._bucket(self._rpm, minimum=1.0, now=now)
        self.tokens = self._bucket(self._tpm, minimum=0.0, now=now)

    def _bucket(self, limit: int | None, minimum: float, now: float) -> TokenBucket | None:
        if limit is None:
            return None
        return TokenBucket(limit, max(minimum, limit * self._burst_seconds / 60.0), now)

    def admit(self, tokens: int, now: float) -> float:
        """Charge one request and `tokens` if both buckets allow it.

        Parameters
        ----------
        tokens : int
            Token cost of the request.
        now : float
            Current time in seconds, from a monotonic clock.

        Returns
        -------
        float
            0 if admitted (and charged), otherwise the seconds to wait before
            the request would be admitted (nothing is charged).
        """
        waits = [0.0, 0.0]
        for index, (bucket, cost) in enumerate(((self.requests, 1), (self.tokens, tokens))):
            if bucket is not None:
                bucket.refill(now)
                waits[index] = bucket.wait_time(cost)
        self.last_waits = (waits[0], waits[1])
        wait = max(waits)
        if wait > 0:
            return wait
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        return 0.0

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the configured limits, as of the last :meth:`admit`."""
        headers: dict[str, str] = {}
        for suffix, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{suffix}"] = str(bucket.limit)
                headers[f"x-ratelimit-remaining-{suffix}"] = str(bucket.remaining())
                headers[f"x-ratelimit-reset-{suffix}"] = format_duration(bucket.reset_time())
        return headers
