"""The circuit breaker: an endpoint that connects but never answers right
stops the job early, with one error that says what it sends instead.

Retrying row by row is right for an endpoint that fails now and then, and
wrong for one that fails every request alike (a proxy's HTML login page
with status 200, empty or ``{}`` bodies, 429s forever, silence): every row
would make all its attempts and end as the same error cell. So the attempts
of every partition in a process, per endpoint, feed one :class:`Breaker`:
while the endpoint has not answered a single request successfully, a run of
:data:`TRIP_AFTER` consecutive attempts that failed *alike* trips it, and
every partition of the process raises the same :class:`EndpointError`.

Once the endpoint has answered once it has shown that it works, and later
failures are row data again (an outage mid-run is what retries and the
checkpoint are for). Rate limits trip it only after :data:`RATE_LIMIT_PATIENCE`
seconds of 429s with no answer at all: a job that starts against an
exhausted budget is slow, not broken.
"""

from __future__ import annotations

import threading
import time

from .._config import Endpoint
from .._errors import EndpointError
from ._client import Failure, Kind

__all__ = ["TRIP_AFTER", "Breaker", "breaker_for"]

#: Consecutive alike failures, with no success ever, that trip the breaker.
TRIP_AFTER = 20
#: Seconds of nothing but 429s before they count as "broken" too.
RATE_LIMIT_PATIENCE = 120.0

_WHAT = {
    Kind.MALFORMED: "answers that are not chat completions",
    Kind.TIMEOUT: "no complete answer within the timeout",
    Kind.RATE_LIMITED: "429 (rate limited) to every request",
    Kind.CONNECTION: "connection failures",
    Kind.TRANSIENT: "server errors",
}


class Breaker:
    """Consecutive alike failures of one endpoint in this process."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.ever_ok = False
        self.kind: Kind | None = None
        self.streak = 0
        self.first_failure = 0.0
        self.sample: str | None = None
        self.last: str | None = None
        self.error: EndpointError | None = None
        self._lock = threading.Lock()

    def success(self) -> None:
        with self._lock:
            self.ever_ok = True
            self.streak = 0

    def failure(self, failure: Failure) -> None:
        """Count a failed attempt; raise :class:`EndpointError` if it trips the breaker."""
        if failure.kind not in _WHAT:
            return
        with self._lock:
            if self.error is not None:
                raise self.error
            if self.ever_ok:
                return
            if failure.kind is not self.kind:
                self.kind, self.streak, self.first_failure = failure.kind, 0, time.monotonic()
            self.streak += 1
            self.last = failure.message
            self.sample = failure.sample or self.sample
            patient = failure.kind is Kind.RATE_LIMITED and time.monotonic() - self.first_failure < RATE_LIMIT_PATIENCE
            if self.streak < TRIP_AFTER or patient:
                return
            seen = f"; it sent: {self.sample!r}" if self.sample else ""
            self.error = EndpointError(
                f"{self.endpoint.display_url} answered none of {self.streak} requests in a row, with "
                f"{_WHAT[failure.kind]} (last: {self.last}){seen}. Check the base URL, the model and "
                f"any proxy in between; nothing more is called."
            )
            raise self.error

    def check(self) -> None:
        """Raise the breaker's error if it has tripped."""
        if self.error is not None:
            raise self.error


_breakers: dict[tuple[Endpoint, str], Breaker] = {}
_lock = threading.Lock()


def breaker_for(endpoint: Endpoint, run: str = "") -> Breaker:
    """This process's breaker of ``endpoint`` for the run ``run`` (a new run starts afresh)."""
    with _lock:
        breaker = _breakers.get((endpoint, run))
        if breaker is None:
            if len(_breakers) > 64:  # a long-lived worker meets many endpoints
                _breakers.clear()
            breaker = _breakers[(endpoint, run)] = Breaker(endpoint)
        return breaker
