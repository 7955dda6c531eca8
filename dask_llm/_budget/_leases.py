"""Concurrency slots: how many runner threads may be calling at once.

A runner thread holds one slot for its whole run of rows. On a cluster the
slots are leases of one ``distributed.Semaphore`` per budget, created once
per worker process by name (never shipped inside a task: that leaks its
refresh timer, dask/distributed#8999). Every acquire and release of such a
lease is a scheduler round trip, so the process keeps a small pool: a slot
given back by a thread that finished its partition is lent to the next one
without a message, and returned to the scheduler only after
:data:`LINGER` seconds unused. While other workers wait for slots, a
process keeps its fair part (from the budget's grant: busy threads weigh as
for the rates), hands back the rest as its threads finish, and asks for no
more. Only one thread per process waits on the scheduler at a time (not one
connection per waiting thread).

A dead worker stops refreshing its leases; the scheduler frees them after
``distributed.scheduler.locks.lease-timeout`` (30 s by default).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from .._errors import ConfigError

__all__ = ["ClusterSlots", "LocalSlots", "Slots"]

#: Seconds an unused lease stays in the process's pool before it goes back.
LINGER = 2.0
#: Seconds one wait on the scheduler's semaphore lasts before it is renewed,
#: so that a waiting thread notices the process shutting down.
ACQUIRE_TIMEOUT = 30.0


class Slots:
    """Counts the runner threads at work; no cap (``max_concurrency=None``)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.peak = 0  # most threads at work since the last :meth:`reset_peak`

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        self._take()
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            with self.cond:
                self.active -= 1
            self._give()

    def reset_peak(self) -> int:
        with self.cond:
            peak, self.peak = self.peak, self.active
            return peak

    def _take(self) -> None:
        pass

    def _give(self) -> None:
        pass

    def reap(self, now: float, everything: bool = False) -> None:
        """Hand back slots that lingered unused (cluster slots only)."""

    def close(self) -> None:
        pass


class LocalSlots(Slots):
    """A cap enforced by an in-process semaphore."""

    def __init__(self, max_concurrency: int) -> None:
        super().__init__()
        self._sem = threading.BoundedSemaphore(max_concurrency)

    def _take(self) -> None:
        self._sem.acquire()

    def _give(self) -> None:
        self._sem.release()


class ClusterSlots(Slots):
    """A cap enforced by the leases of a ``distributed.Semaphore``.

    Parameters
    ----------
    semaphore : distributed.Semaphore
        Bound to this worker's scheduler connection and event loop.
    """

    def __init__(self, semaphore: Any) -> None:
        super().__init__()
        self._sem = semaphore
        self._spare: list[float] = []  # when each unused lease came back
        self._fetching = False
        self._closed = False
        self.held = 0  # leases this process holds from the scheduler
        self.fair: int | None = None  # its fair part of them, from the budget's grant
        self.contended = False  # from the grant: other processes wait for slots

    def _take(self) -> None:
        with self.cond:
            while True:
                if self._spare:
                    self._spare.pop()
                    return
                if self._closed:
                    raise RuntimeError("the worker is shutting down")
                if not self._fetching and self._may_fetch():
                    break
                # Another thread is fetching, or this process has its fair
                # part while others wait: a slot will come back locally (or
                # a grant changes the picture; looked at again within 1 s).
                self.cond.wait(1.0)
            self._fetching = True
        got = False
        try:
            while not got:
                try:
                    got = bool(self._sem.acquire(timeout=ACQUIRE_TIMEOUT))
                except ValueError as exc:  # "Inconsistent max leases"
                    raise ConfigError(
                        f"another budget named {self._sem.name.rsplit('-slots-', 1)[0]!r} "
                        f"uses a different max_concurrency on this cluster ({exc})"
                    ) from None
                if not got and self._closed:
                    raise RuntimeError("the worker is shutting down")
            with self.cond:
                self.held += 1
        finally:
            with self.cond:
                self._fetching = False
                self.cond.notify()

    def adopt(self, contended: bool, fair: int | None) -> None:
        """What the budget's latest grant says about slots."""
        with self.cond:
            self.contended, self.fair = bool(contended), fair
            self.cond.notify()

    def _may_fetch(self) -> bool:
        # Asking for more than the fair part while others wait would only
        # bounce slots between processes, two round trips each time.
        return not self.contended or self.fair is None or self.held < self.fair

    def _excess(self) -> bool:
        # While others wait, a process keeps no more than its fair part;
        # otherwise a slot lingers for the next partition of this process.
        return self.contended and self.held > (self.fair or 0)

    def _give(self) -> None:
        with self.cond:
            if not self._excess():
                self._spare.append(time.monotonic())
                self.cond.notify()
                return
            self.held -= 1
        self._release_one()

    def _release_one(self) -> None:
        self._sem.release()

    def reap(self, now: float, everything: bool = False) -> None:
        """Hand back spare slots that lingered unused, or that exceed the
        fair part while others wait; with ``everything``, all spares."""
        n = 0
        with self.cond:
            keep = []
            for t in sorted(self._spare, reverse=True):
                if everything or now - t >= LINGER or self._excess():
                    self.held -= 1
                    n += 1
                else:
                    keep.append(t)
            self._spare = keep
        for _ in range(n):
            self._release_one()

    @property
    def spare(self) -> int:
        return len(self._spare)

    def close(self) -> None:
        with self.cond:
            self._closed = True
            n, self._spare = len(self._spare), []
            self.held -= n
            self.cond.notify_all()
        for _ in range(n):
            with contextlib.suppress(Exception):
                self._release_one()
