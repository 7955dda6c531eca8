"""Concurrency slots: how many runner threads may be calling at once.

A runner thread holds one slot for its whole run of rows. The slots of a
budget are granted to each process by its allocator, as a number, with the
budget's rates (see :mod:`._alloc`): a thread takes and gives back a slot
here with no message, so ``max_concurrency`` costs a message only when the
number moves (a process joins or leaves, starts a pool with more threads
than its slots, or has had slots unused for a while as others wait). A lowered number takes effect for new
threads at once; slots that threads still hold go back as they finish, and
the process then says so (:meth:`GrantedSlots.report_due`), which is what
lets the allocator give them to someone else.

A dead process stops renewing its grant; the allocator frees its slots
5 s after the cluster reports it gone (its calls may still be running at
the provider), or when its grant expires.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GrantedSlots", "Slots"]

#: Seconds one wait for a slot lasts before it looks again (at a closed budget).
WAIT_SLICE = 1.0


class Slots:
    """Counts the runner threads at work; no cap (``max_concurrency=None``)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0  # threads holding a slot
        self.wanting = 0  # threads holding or waiting for one
        self.peak = 0  # most threads wanting a slot since the last :meth:`reset_peak`

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        with self.cond:
            self.wanting += 1
            self.peak = max(self.peak, self.wanting)
        try:
            self._take()
        except BaseException:
            with self.cond:
                self.wanting -= 1
            raise
        try:
            yield
        finally:
            with self.cond:
                self.wanting -= 1
                self.active -= 1
                self._gave()

    def reset_peak(self) -> int:
        with self.cond:
            peak, self.peak = self.peak, self.wanting
            return peak

    def _take(self) -> None:
        with self.cond:
            self.active += 1

    def _gave(self) -> None:
        """A slot came back (``cond`` held)."""

    def close(self) -> None:
        pass


class GrantedSlots(Slots):
    """A cap on threads at work, as granted by the budget's allocator.

    Parameters
    ----------
    on_report : callable
        Called when the process may have something to tell the allocator (a
        lowered grant has been met, or threads wait for slots); it must only
        wake the sender, as it is called with :attr:`cond` held.
    """

    def __init__(self, on_report: Callable[[], None]) -> None:
        super().__init__()
        self.cap = 0  # slots granted; none until the first grant
        self.seq = -1  # the grant they came with
        self.contended = False  # some process wants more slots than it has
        self.owed = False  # a lowered grant not yet acknowledged
        self._closed = False
        self._on_report = on_report

    def _take(self) -> None:
        with self.cond:
            if self.active >= self.cap:
                self._on_report()  # more threads than slots: the keeper may ask for more
            while self.active >= self.cap:
                if self._closed:
                    raise RuntimeError("the budget was closed in this process")
                self.cond.wait(WAIT_SLICE)
            self.active += 1

    def _gave(self) -> None:
        self.cond.notify()
        if self.owed and self.active <= self.cap:
            self._on_report()  # only wakes the keeper, which sends it

    def adopt(self, grant: Any) -> None:
        """The slots of a grant (a newer one than any adopted so far)."""
        with self.cond:
            if grant.seq <= self.seq or grant.slots is None:
                return
            if grant.slots < self.cap:
                self.owed = True
            self.cap, self.seq, self.contended = grant.slots, grant.seq, bool(grant.contended)
            self.cond.notify_all()
            due = self.owed and self.active <= self.cap
        if due:
            self._on_report()

    def report(self) -> tuple[int, int]:
        """``(in_use, applied)`` for a renewal: slots in use and the grant
        they are counted under. Meets an owed acknowledgement."""
        with self.cond:
            if self.active <= self.cap:
                self.owed = False
            return self.active, self.seq

    def report_due(self) -> bool:
        """Whether a lowered grant has been met and the allocator does not know."""
        with self.cond:
            return self.owed and self.active <= self.cap

    def reset(self, last: int | None) -> None:
        """The share was handed back: no slots until the next grant, which
        is newer than ``last`` (the allocator's seq at the release)."""
        with self.cond:
            self.cap, self.owed, self.contended = 0, False, False
            if last is not None:
                self.seq = max(self.seq, last)

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify_all()
