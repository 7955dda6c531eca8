"""A process's local reservoir of budget: requests and tokens it may spend.

The reservoir holds two token buckets that refill at the process's granted
share of the budget (see :mod:`._budget_alloc`). Runner threads take from
them without any message; the keeper renews the grant in the background.

Waiting threads queue in arrival order and only the head of the queue sleeps
on a timer: when 32 threads wait for one request's worth of budget, one
thread wakes when it accrues, not 32.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from ._alloc import Grant

__all__ = ["Bucket", "Reservoir"]

#: Longest a waiting thread sleeps before it looks again, so that a grant
#: revision or a cancelled job is noticed even if a wake-up were missed.
MAX_NAP = 0.5


class Bucket:
    """Continuous token bucket with debt.

    A cost larger than the capacity passes once the bucket is full and
    leaves it in debt, which later costs wait out: a request with a large
    ``max_tokens`` can always pass, and the long-run rate still holds.
    """

    def __init__(self, per_second: float, capacity: float, now: float) -> None:
        self.rate = per_second
        self.capacity = capacity
        # Empty at first: the cluster's burst allowance is the sum of the
        # holders' capacities, and holders that join one after another must
        # not each bring a full bucket.
        self.level = 0.0
        self.updated = now

    def refill(self, now: float) -> None:
        # ``updated`` may lie in the future: nothing accrues during a cool-down.
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, cost: float) -> float:
        """Seconds until ``cost`` may be taken (call :meth:`refill` first)."""
        missing = min(cost, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def retune(self, per_second: float, capacity: float, now: float) -> None:
        self.refill(now)
        self.rate, self.capacity = per_second, capacity
        self.level = min(self.level, capacity)


class Reservoir:
    """Local buckets fed by a :class:`Grant`.

    Parameters
    ----------
    burst : float
        Seconds' worth of the share each bucket holds at most.
    clock : callable
        Monotonic clock (tests pass a fake one).
    """

    def __init__(self, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.clock = clock
        self.lock = threading.Lock()
        self.requests: Bucket | None = None
        self.tokens: Bucket | None = None
        self.granted = False
        self.expires = 0.0
        self.cooldown_until = 0.0
        self.saturated = False  # some request waited for budget since the last renewal
        self._waiters: collections.deque[threading.Condition] = collections.deque()
        #: Called (lock held) when a thread needs a grant that is missing or expired.
        self.on_starved: Callable[[], None] = lambda: None
        self.seq = -1
        self.taken = 0  # requests let through, ever
        self.answered = 0  # of which the provider answered (not 429, not failed), ever

    # -- runner side ------------------------------------------------------

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> bool:
        """Block until one request costing ``tokens`` may start and take its
        budget (``True``), or until ``stop`` is set (``False``, nothing taken)."""
        with self.lock:
            me = threading.Condition(self.lock)
            self._waiters.append(me)
            try:
                while True:
                    if stop is not None and stop.is_set():
                        return False
                    if self._waiters[0] is me:
                        wait = self._try_take(tokens)
                        if wait == 0.0:
                            return True
                        me.wait(min(wait, MAX_NAP))
                    else:
                        me.wait(MAX_NAP)
            finally:
                self._waiters.remove(me)
                if self._waiters:
                    self._waiters[0].notify()

    def _try_take(self, tokens: int) -> float:
        now = self.clock()
        if not self.granted or now >= self.expires:
            self.granted = False
            self.on_starved()
            return MAX_NAP
        if now < self.cooldown_until:
            return self.cooldown_until - now
        wait = 0.0
        for bucket, cost in ((self.requests, 1.0), (self.tokens, float(tokens))):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.wait(cost))
        if wait > 0.0:
            self.saturated = True
            return wait
        self.taken += 1
        if self.requests is not None:
            self.requests.level -= 1.0
        if self.tokens is not None:
            self.tokens.level -= tokens
        return 0.0

    def settle(self, reserved: int, used: int | None) -> None:
        """Give back what a reservation over-estimated, or charge the excess
        (``used`` is ``None`` for an attempt that got no answer)."""
        with self.lock:
            if used is not None:
                self.answered += 1
            if self.tokens is None:
                return
            self.tokens.refill(self.clock())
            delta = reserved if used is None else reserved - used
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + delta)

    # -- keeper side -------------------------------------------------------

    def apply(self, grant: Grant) -> None:
        """Adopt a new or revised grant (the lock must not be held)."""
        with self.lock:
            if grant.seq <= self.seq:
                return  # overtaken by a later grant that arrived first
            self.seq = grant.seq
            now = self.clock()
            self.requests = self._retune(self.requests, grant.rpm, 1.0, now)
            self.tokens = self._retune(self.tokens, grant.tpm, 0.0, now)
            self.granted = True
            self.expires = now + grant.ttl
            if grant.cooldown > 0:
                self._cool(now + grant.cooldown)
            self._wake()

    def _retune(self, bucket: Bucket | None, per_minute: float | None, floor: float, now: float) -> Bucket | None:
        if per_minute is None:
            return None
        rate = per_minute / 60.0
        capacity = max(floor, rate * self.burst)
        if bucket is None:
            return Bucket(rate, capacity, now)
        bucket.retune(rate, capacity, now)
        return bucket

    def cool_down(self, seconds: float) -> bool:
        """Pause every request of this process for ``seconds``; whether that
        extended the pause already in force."""
        with self.lock:
            until = self.clock() + seconds
            if until <= self.cooldown_until + 0.01:
                return False
            self._cool(until)
            return True

    def _cool(self, until: float) -> None:
        self.cooldown_until = max(self.cooldown_until, until)
        # Whatever accrued must not leave as one burst when the pause ends:
        # right after a 429 the provider's own bucket is empty.
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(self.clock())
                bucket.level = min(bucket.level, 0.0)
                bucket.updated = max(bucket.updated, until)

    def _wake(self) -> None:
        if self._waiters:
            self._waiters[0].notify()

    @property
    def waiting(self) -> int:
        return len(self._waiters)
