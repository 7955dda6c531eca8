"""The process's side of a budget: the limiter the runner talks to.

One :class:`ProcessBudget` per budget name and process (per worker, when
several share a process) serves every runner thread of every enrichment that
uses the budget there. It combines

- concurrency slots, granted with the rates (:mod:`._leases`),
- the local reservoir that paces requests (:mod:`._reservoir`),
- a keeper thread that renews the reservoir's grant from the allocator,
  which lives in the job's coordinator (:class:`CoordinatorLink`): the
  Dask scheduler, or this process without a cluster.

The keeper runs only while the process has work on the budget; after
:data:`IDLE_RELEASE` seconds idle it hands the share back and exits.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from .._errors import ConfigError
from ._alloc import PUSH_GRANT, Grant
from ._leases import GrantedSlots, Slots
from ._limiter import Limiter, Unlimited
from ._reservoir import Reservoir
from ._value import Budget

__all__ = ["CoordinatorLink", "ProcessBudget", "limiter_for", "process_budget"]

logger = logging.getLogger("dask_llm.budget")

#: Cool-down after a 429 that did not say how long to wait.
DEFAULT_PENALTY = 1.0
#: The shortest cool-down a 429 imposes on the process's threads.
MIN_PENALTY = 0.25
#: Renew at this fraction of a grant's validity.
RENEW_AT = 0.5
#: Least seconds between two renewals triggered by a growing demand.
MIN_RENEW_INTERVAL = 2.0
#: Seconds a process keeps slots its threads no longer want while another
#: process waits for some: longer than the gap between two partitions (the
#: next one uses them), short enough not to hold them through a long tail.
LINGER = 2.0
#: Seconds a process stays idle before it hands its share back: longer than
#: the gap between two partitions of one worker, short enough that the
#: others get the rate at the end of a job.
IDLE_RELEASE = 0.5
#: Renewals that never report a smaller demand (only "due" and "give back" do).
_NO_SHRINK = frozenset({"acknowledge", "starved", "learned", "demand grew"})
#: Seconds over which a process's recent request rate is measured.
RATE_WINDOW = 5.0
#: 429s under this share of the process's recent requests, or fewer than
#: STRAY_COUNT of them, are stray: they cost the row its wait, never a pause
#: of every thread or a lower rate.
STRAY_SHARE = 0.1
STRAY_COUNT = 3

_RATE_HEADERS = {"rpm": "x-ratelimit-limit-requests", "tpm": "x-ratelimit-limit-tokens"}


class Link(Protocol):
    """Where a process's grant comes from."""

    holder: str

    def lease(
        self,
        demand: float,
        learned: dict[str, float],
        saturated: bool,
        observed: float | None,
        in_use: int,
        applied: int,
    ) -> Grant: ...
    def release(self) -> int: ...
    def penalize(self, seconds: float, observed: float, sent: float) -> None: ...


class CoordinatorLink:
    """A budget's allocator in the job's coordinator (see ``dask_llm._coordination``)."""

    def __init__(self, coordinator: Any, budget: Budget) -> None:
        self.coordinator = coordinator
        self.holder = coordinator.holder
        self.name = budget.name
        self.limits = budget.limits()

    def lease(
        self,
        demand: float,
        learned: dict[str, float],
        saturated: bool,
        observed: float | None,
        in_use: int,
        applied: int,
    ) -> Grant:
        msg = self.coordinator.call(
            "budget_lease", name=self.name, limits=self.limits, demand=demand, learned=learned,
            saturated=saturated, observed=observed, in_use=in_use, applied=applied,
        )  # fmt: skip
        return Grant.from_msg(msg)

    def release(self) -> int:
        return int(self.coordinator.call("budget_release", name=self.name))

    def penalize(self, seconds: float, observed: float, sent: float) -> None:
        self.coordinator.call("budget_penalize", name=self.name, seconds=seconds, observed=observed, sent=sent)


def _on_push(holder: str, name: str, grant: dict[str, Any], **_: Any) -> None:
    """A revised grant pushed by the coordinator: adopt it."""
    pb = _budgets.get((name, holder))
    if pb is not None:
        revised = Grant.from_msg(grant)
        pb.reservoir.apply(revised)
        # A shorter validity (an adaptive budget that now has a rate to
        # probe) brings the next renewal forward.
        pb._renew_at = min(pb._renew_at, time.monotonic() + RENEW_AT * revised.ttl)
        if isinstance(pb.slots, GrantedSlots):
            pb.slots.adopt(revised)
            pb.kick()  # acknowledge a lowered grant, or hand back spare slots, now


# -- the limiter -----------------------------------------------------------------------


class ProcessBudget:
    """The :class:`~dask_llm._budget._limiter.Limiter` of one budget in one process."""

    def __init__(self, budget: Budget, link: Link) -> None:
        self.budget = budget
        self.link = link
        self.slots = Slots() if budget.max_concurrency is None else GrantedSlots(on_report=self.kick)
        self.reservoir = Reservoir(budget.burst)
        self.reservoir.on_starved = self.kick
        self._keeper: threading.Thread | None = None
        self._keeper_lock = threading.Lock()
        self._users = 0  # runner threads inside lease()
        self._wake = threading.Event()
        self._learned: dict[str, float] = {}
        self._reported: dict[str, float] = {}
        self._demand = 0.0
        self._renew_at = 0.0
        self._renewed = -float("inf")
        self._answered = -1  # answers as of the last renewal (-1: none since the first lease)
        # (time, answers, requests, 429s) over the last few seconds: the rate the provider
        # actually serves, which is what an adaptive budget settles on.
        self._samples: collections.deque[tuple[float, int, int, int]] = collections.deque()
        self._limited = 0  # 429s, ever
        self.renewals: collections.Counter[str] = collections.Counter()  # by reason
        self._slack_since: float | None = None  # since when threads want fewer slots than granted

    # -- Limiter protocol ----------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, pool: int = 1) -> Iterator[None]:
        # The grant first: it carries the slots.
        with self._keeper_lock:
            self._users += 1
            try:
                self._ensure_keeper(pool)
            except BaseException:
                self._users -= 1
                raise
        try:
            with self.slots.lease():
                yield
        finally:
            with self._keeper_lock:
                self._users -= 1

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> bool:
        return self.reservoir.acquire(tokens, stop)

    def settle(self, reserved: int, used: int | None) -> None:
        self.reservoir.settle(reserved, used)

    def penalize(self, retry_after: float | None) -> None:
        self._limited += 1
        observed, sent, limited = self.recent_rates()
        recent_429s = self._limited - (self._samples[0][3] if self._samples else 0)
        if limited < STRAY_SHARE * sent or recent_429s < STRAY_COUNT:
            # A stray 429 (a provider's hiccup, or the first of a job's first
            # wave): the row waits, the others go on. Over a real limit the
            # share passes STRAY_SHARE within a fraction of a second.
            return
        seconds = DEFAULT_PENALTY if retry_after is None else retry_after
        # A provider that says "in 5 ms" means one request, not every
        # thread: a short pause for all of them keeps the next burst small.
        seconds = max(seconds, MIN_PENALTY)
        if self.reservoir.cool_down(seconds):
            try:
                self.link.penalize(seconds, observed, sent)
            except Exception as exc:  # the local pause stands regardless
                logger.warning("dask-llm: could not share a cool-down: %s", exc)
            # The allocator may have lowered the rate: take the new share now,
            # not at the next regular renewal (the others get theirs pushed).
            self._renew_at = 0.0
            self.kick()

    def observe(self, headers: Mapping[str, str]) -> None:
        for what, header in _RATE_HEADERS.items():
            value = headers.get(header)
            if value is None:
                continue
            try:
                limit = float(value)
            except ValueError:
                continue
            if limit > 0 and limit != self._learned.get(what):
                self._learned[what] = limit
                self._wake.set()

    # -- keeper ------------------------------------------------------------------

    def recent_rates(self) -> tuple[float, float, float]:
        """Requests per minute over the last few seconds: those the provider
        answered for this process (429s and failures excluded), those it
        sent, and those answered 429."""
        if not self._samples:
            return 0.0, 0.0, 0.0
        t0, *then = self._samples[0]
        per_minute = 60.0 / max(time.monotonic() - t0, 1.0)
        now = self._counts()
        return tuple((a - b) * per_minute for a, b in zip(now, then, strict=True))  # type: ignore[return-value]

    def _counts(self) -> tuple[int, int, int]:
        return self.reservoir.answered, self.reservoir.taken, self._limited

    def kick(self) -> None:
        """Wake the keeper."""
        self._wake.set()

    def _ensure_keeper(self, pool: int) -> None:
        """Start the keeper unless it runs (``_keeper_lock`` held); ``pool``
        threads are about to want a slot."""
        if self._keeper is not None:
            return
        # The first lease is taken here, in a runner thread, so that a
        # refusal (conflicting limits) fails the task with a clear error.
        self.renewals["first"] += 1
        self._renew(expected=pool)
        self._samples.append((time.monotonic(), *self._counts()))
        self._keeper = threading.Thread(target=self._keep, name=f"dask-llm-budget-{self.budget.name}", daemon=True)
        self._keeper.start()

    @property
    def busy(self) -> bool:
        return self._keeper is not None or self._users > 0

    def _renew(self, expected: int = 0, reason: str | None = None) -> None:
        peak = max(self.slots.reset_peak(), expected)
        granted = self.slots if isinstance(self.slots, GrantedSlots) else None
        # Handing slots back, say what is wanted now; otherwise the recent
        # peak, so that the usual ups and downs (a partition's tail, the next
        # partition's start) cost no message.
        demand = _weight(self.slots.wanting if reason == "give back" else peak)
        if reason in _NO_SHRINK:
            # Renewals between regular ones come within moments of the last:
            # their peak is a pool still ramping up, not a smaller demand
            # (which would move slots away and back, a push each way).
            demand = max(demand, int(self._demand))
        in_use, applied = granted.report() if granted is not None else (0, -1)
        saturated, self.reservoir.saturated = self.reservoir.saturated, False
        learned = dict(self._learned)
        now = time.monotonic()
        answered = self.reservoir.answered
        observed = (answered - self._answered) * 60.0 / max(now - self._renewed, 1.0) if self._answered >= 0 else None
        grant = self.link.lease(demand, learned, saturated, observed, in_use, applied)
        self._reported, self._demand, self._answered = learned, demand, answered
        now = time.monotonic()
        self._renewed = now
        self._renew_at = now + RENEW_AT * grant.ttl
        self.reservoir.apply(grant)
        if granted is not None:
            granted.adopt(grant)

    def _renewal_due(self, now: float) -> str | None:
        """Why the grant should be renewed now (``None``: it need not be)."""
        if now >= self._renew_at or not self.reservoir.granted:
            return "due"
        if self._learned != self._reported:
            return "learned"  # the provider announced its limits: tell everyone now
        slots = self.slots
        if isinstance(slots, GrantedSlots):
            if slots.report_due():
                return "acknowledge"  # slots a lowered grant took back are free: others wait for them
            if slots.wanting > slots.cap and _weight(slots.wanting) > self._demand:
                return "starved"  # a new pool's threads wait for slots: ask now
            if slots.contended and _weight(slots.wanting) < self._demand and slots.cap > slots.wanting:
                self._slack_since = self._slack_since or now
                if now - self._slack_since >= LINGER and now - self._renewed >= LINGER:
                    return "give back"  # others wait, and this process has slots it no longer wants
            else:
                self._slack_since = None
        # A demand that grew is worth telling at once; one that shrank waits
        # for the regular renewal, so partition tails cause no messages.
        if now - self._renewed >= MIN_RENEW_INTERVAL and _weight(self.slots.peak) > self._demand:
            return "demand grew"
        return None

    def _keep(self) -> None:
        idle_since: float | None = None
        failures = 0
        while True:
            now = time.monotonic()
            if self._users == 0 and self.reservoir.waiting == 0:
                idle_since = idle_since or now
                if now - idle_since >= IDLE_RELEASE and self._retire():
                    return
            else:
                idle_since = None
                reason = self._renewal_due(now)
                if reason is not None:
                    self.renewals[reason] += 1
                    try:
                        self._renew(reason=reason)
                        failures = 0
                    except Exception as exc:
                        failures += 1
                        logger.warning("dask-llm: budget renewal failed (%d in a row): %s", failures, exc)
                        self._wake.wait(min(5.0, 0.5 * failures))
            now = time.monotonic()
            self._samples.append((now, *self._counts()))
            while now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            nap = 0.1 if idle_since is not None else min(1.0, self._renew_at - time.monotonic())
            self._wake.wait(max(0.05, nap))
            self._wake.clear()

    def _retire(self) -> bool:
        """Hand the share back and stop, unless work arrived meanwhile."""
        with self._keeper_lock:
            if self._users or self.reservoir.waiting:
                return False
            last = None
            try:
                last = self.link.release()
            except Exception as exc:  # it expires on its own
                logger.warning("dask-llm: could not release a budget share: %s", exc)
            # A grant pushed before the release may still be on its way: no
            # newer than ``last``, it is ignored (an allocator re-created
            # since starts from a higher seq, see Allocator).
            with self.reservoir.lock:
                self.reservoir.granted = False
                if last is not None:
                    self.reservoir.seq = max(self.reservoir.seq, last)
            if isinstance(self.slots, GrantedSlots):
                self.slots.reset(last)
            self._answered = -1  # the next lease starts a new count
            self._keeper = None
            return True


def _weight(threads: int) -> int:
    """A process's demand as reported: its busy threads rounded up to a power
    of two, so that the usual small ups and downs cost no message."""
    return 1 << max(0, threads - 1).bit_length()


# -- the per-process registry --------------------------------------------------------

_budgets: dict[tuple[str, str | None], ProcessBudget] = {}
_budgets_lock = threading.Lock()


def limiter_for(budget: Budget | None, coordinator: Any) -> Limiter:
    """The limiter that enforces ``budget`` for calls made from this process,
    its allocator in ``coordinator``; shared by every enrichment here that
    uses the same budget name. No budget: a limiter that never waits."""
    return Unlimited() if budget is None else process_budget(budget, coordinator)


def process_budget(budget: Budget, coordinator: Any) -> ProcessBudget:
    """This process's limiter for ``budget``, whose allocator lives in
    ``coordinator`` (see :func:`~._value.limiter_for`)."""
    key = (budget.name, coordinator.holder)
    with _budgets_lock:
        pb = _budgets.get(key)
        if pb is not None and pb.budget.limits() != budget.limits():
            if pb.busy:
                raise ConfigError(
                    f"budget {budget.name!r} is in use in this process with other limits; "
                    f"give the budgets different names, or the same limits"
                )
            pb.slots.close()
            pb = None
        if pb is None:
            pb = _budgets[key] = _make(budget, coordinator)
        return pb


def _make(budget: Budget, coordinator: Any) -> ProcessBudget:
    # Pushes come for every budget this process holds; one handler per holder.
    coordinator.subscribe(PUSH_GRANT, functools.partial(_on_push, coordinator.holder))
    return ProcessBudget(budget, CoordinatorLink(coordinator, budget))
