"""The seam between the runner and a request budget.

The runner asks a limiter for permission before every attempt and tells it
what each attempt cost and what the provider said. :class:`Unlimited` is the
limiter of a job without a budget: it permits everything at no cost.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Protocol

__all__ = ["Limiter", "Unlimited"]


class Limiter(Protocol):
    """What the runner needs from a request budget."""

    def lease(self, pool: int = 1) -> contextlib.AbstractContextManager[None]:
        """A concurrency slot, held by one runner thread for a whole run of
        requests (taking one per request would cost a round trip each).
        ``pool``: the threads of its pool, all about to ask (a hint, so that
        the first grant is sized for them rather than for the first)."""
        ...

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> bool:
        """Block until one request estimated at ``tokens`` tokens may start
        (``True``), or ``stop`` is set (``False``: nothing was taken)."""
        ...

    def settle(self, reserved: int, used: int | None) -> None:
        """Reconcile a reservation with the tokens the provider counted
        against its limit, from the response's ``usage`` (the prompt, plus
        ``max_tokens`` when the request set it, since providers reserve it
        at admission; else the completion). ``None``: the attempt failed
        before the provider counted anything."""
        ...

    def penalize(self, retry_after: float | None) -> None:
        """A 429 was answered: slow everyone down, for ``retry_after`` seconds
        when the provider said so."""
        ...

    def observe(self, headers: Mapping[str, str]) -> None:
        """Headers of an answer, e.g. ``x-ratelimit-remaining-requests``."""
        ...


class Unlimited:
    """A limiter that never waits."""

    @contextlib.contextmanager
    def lease(self, pool: int = 1) -> Iterator[None]:
        yield

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> bool:
        return True

    def settle(self, reserved: int, used: int | None) -> None:
        pass

    def penalize(self, retry_after: float | None) -> None:
        pass

    def observe(self, headers: Mapping[str, str]) -> None:
        pass
