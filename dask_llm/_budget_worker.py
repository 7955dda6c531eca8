"""The process's side of a budget: the limiter the runner talks to.

One :class:`ProcessBudget` per budget name and process (per worker, when
several share a process) serves every runner thread of every enrichment that
uses the budget there. It combines

- concurrency slots (:mod:`._budget_leases`),
- the local reservoir that paces requests (:mod:`._budget_reservoir`),
- a keeper thread that renews the reservoir's grant from the allocator:
  the scheduler's (:class:`SchedulerLink`) or an in-process one
  (:class:`LocalLink`) when no ``distributed`` worker runs this code.

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

from ._budget import Budget
from ._budget_alloc import Allocator, Grant
from ._budget_leases import ClusterSlots, LocalSlots, Slots
from ._budget_reservoir import Reservoir
from ._errors import ConfigError

__all__ = ["LocalLink", "ProcessBudget", "SchedulerLink", "process_budget"]

logger = logging.getLogger("dask_llm.budget")

#: Cool-down after a 429 that did not say how long to wait.
DEFAULT_PENALTY = 1.0
#: Renew at this fraction of a grant's validity.
RENEW_AT = 0.5
#: Least seconds between two renewals triggered by a growing demand.
MIN_RENEW_INTERVAL = 2.0
#: Seconds a process stays idle before it hands its share back: longer than
#: the gap between two partitions of one worker, short enough that the
#: others get the rate at the end of a job.
IDLE_RELEASE = 0.5
#: Seconds over which a process's recent request rate is measured.
RATE_WINDOW = 5.0

_RATE_HEADERS = {"rpm": "x-ratelimit-limit-requests", "tpm": "x-ratelimit-limit-tokens"}


class Link(Protocol):
    """Where a process's grant comes from."""

    holder: str

    def lease(self, demand: float, learned: dict[str, float], saturated: bool, observed: float) -> Grant: ...
    def release(self) -> None: ...
    def penalize(self, seconds: float, observed: float) -> None: ...


# -- without a cluster ---------------------------------------------------------

_local_allocators: dict[str, tuple[dict[str, Any], Allocator]] = {}
_local_lock = threading.Lock()


class LocalLink:
    """The allocator lives in this process (no ``distributed`` worker)."""

    holder = "local"

    def __init__(self, budget: Budget) -> None:
        with _local_lock:
            limits, alloc = _local_allocators.get(budget.name, (None, None))
            # Other limits under a known name: process_budget() made sure
            # the old budget is idle, so it is replaced.
            if alloc is None or limits != budget.limits():
                alloc = Allocator(
                    budget.rpm, budget.tpm, bool(budget.adaptive), time.monotonic(), budget.max_concurrency
                )
                _local_allocators[budget.name] = (budget.limits(), alloc)
        self.allocator = alloc
        self.lock = _local_lock

    def lease(self, demand: float, learned: dict[str, float], saturated: bool, observed: float) -> Grant:
        with self.lock:
            grant, _ = self.allocator.lease(
                self.holder, demand, time.monotonic(), learned=learned, saturated=saturated, observed=observed
            )
        return grant

    def release(self) -> None:
        with self.lock:
            self.allocator.release(self.holder, time.monotonic())

    def penalize(self, seconds: float, observed: float) -> None:
        with self.lock:
            self.allocator.penalize(self.holder, seconds, time.monotonic(), observed)


# -- on a cluster ------------------------------------------------------------------

_registered: set[str] = set()  # scheduler addresses this process registered the plugin with
_register_lock = threading.Lock()


class SchedulerLink:
    """The allocator lives in the scheduler's :class:`BudgetPlugin`."""

    def __init__(self, worker: Any, budget: Budget, slots: str | None) -> None:
        self.worker = worker
        self.holder = worker.address
        self.name = budget.name
        self.limits = budget.limits()
        self.slots = slots
        self._ensure_plugin()

    def _call(self, op: str, **kwargs: Any) -> Any:
        from distributed.utils import sync

        method = getattr(self.worker.scheduler, op)
        return sync(self.worker.loop, method, callback_timeout=60, **kwargs)

    def _ensure_plugin(self) -> None:
        from distributed.protocol.pickle import dumps

        from ._budget_plugin import PLUGIN_NAME, PUSH_OP, BudgetPlugin

        # The stream handler first: the scheduler pushes only to holders, and
        # this process becomes one with its first lease.
        self.worker.stream_handlers.setdefault(PUSH_OP, functools.partial(_on_push, self.holder))
        key = self.worker.scheduler.address
        with _register_lock:
            if key in _registered:
                return
            self._call(
                "register_scheduler_plugin", plugin=dumps(BudgetPlugin()), name=PLUGIN_NAME, idempotent=True
            )
            _registered.add(key)

    def lease(self, demand: float, learned: dict[str, float], saturated: bool, observed: float) -> Grant:
        msg = self._call(
            "dask_llm_budget_lease",
            name=self.name,
            limits=self.limits,
            worker=self.holder,
            demand=demand,
            learned=learned,
            saturated=saturated,
            observed=observed,
            slots=self.slots,
        )
        return Grant.from_msg(msg)

    def release(self) -> None:
        self._call("dask_llm_budget_release", name=self.name, worker=self.holder)

    def penalize(self, seconds: float, observed: float) -> None:
        self._call(
            "dask_llm_budget_penalize", name=self.name, worker=self.holder, seconds=seconds, observed=observed
        )


def _on_push(holder: str, name: str, grant: dict[str, Any], **_: Any) -> None:
    """Stream handler on the worker's event loop: adopt a pushed grant.

    It must never raise: an exception here would close the worker's stream.
    """
    try:
        pb = _budgets.get((name, holder))
        if pb is not None:
            pb.reservoir.apply(Grant.from_msg(grant))
            if isinstance(pb.slots, ClusterSlots):
                pb.slots.adopt(grant.get("contended", False), grant.get("slots"))
                pb.kick()  # hand spare slots back now if others wait
    except Exception:  # pragma: no cover - defensive
        logger.exception("dask-llm: could not apply a budget grant")


# -- the limiter -----------------------------------------------------------------------


class ProcessBudget:
    """The :class:`~dask_llm._limiter.Limiter` of one budget in one process."""

    def __init__(self, budget: Budget, link: Link, slots: Slots) -> None:
        self.budget = budget
        self.link = link
        self.slots = slots
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
        self._taken = -1  # requests let through as of the last renewal
        self._samples: collections.deque[tuple[float, int]] = collections.deque()  # (time, taken), last few s
        self.renewals = 0

    # -- Limiter protocol ----------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        with self.slots.lease():
            with self._keeper_lock:
                self._users += 1
                try:
                    self._ensure_keeper()
                except BaseException:
                    self._users -= 1
                    raise
            try:
                yield
            finally:
                with self._keeper_lock:
                    self._users -= 1

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> bool:
        return self.reservoir.acquire(tokens, stop)

    def settle(self, reserved: int, used: int | None) -> None:
        self.reservoir.settle(reserved, used)

    def penalize(self, retry_after: float | None) -> None:
        seconds = DEFAULT_PENALTY if retry_after is None else retry_after
        if seconds > 0 and self.reservoir.cool_down(seconds):
            try:
                self.link.penalize(seconds, self.recent_rate())
            except Exception as exc:  # the local pause stands regardless
                logger.warning("dask-llm: could not share a cool-down: %s", exc)

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

    def recent_rate(self) -> float:
        """Requests per minute this process let through over the last few seconds."""
        samples = self._samples
        if not samples:
            return 0.0
        t0, n0 = samples[0]
        return (self.reservoir.taken - n0) * 60.0 / max(time.monotonic() - t0, 1.0)

    def kick(self) -> None:
        """Wake the keeper."""
        self._wake.set()

    def _ensure_keeper(self) -> None:
        """Start the keeper unless it runs (``_keeper_lock`` held)."""
        if self._keeper is not None:
            return
        # The first lease is taken here, in a runner thread, so that a
        # refusal (conflicting limits) fails the task with a clear error.
        self._renew()
        self._keeper = threading.Thread(target=self._keep, name=f"dask-llm-budget-{self.budget.name}", daemon=True)
        self._keeper.start()

    @property
    def busy(self) -> bool:
        return self._keeper is not None or self._users > 0

    def _renew(self) -> None:
        demand = _weight(max(self.slots.reset_peak(), self.slots.active))
        saturated, self.reservoir.saturated = self.reservoir.saturated, False
        learned = dict(self._learned)
        now = time.monotonic()
        taken = self.reservoir.taken
        observed = (taken - self._taken) * 60.0 / max(now - self._renewed, 1.0) if self._taken >= 0 else 0.0
        grant = self.link.lease(demand, learned, saturated, observed)
        self._reported, self._demand, self._taken = learned, demand, taken
        self.renewals += 1
        now = time.monotonic()
        self._renewed = now
        self._renew_at = now + RENEW_AT * grant.ttl
        self.reservoir.apply(grant)
        if isinstance(self.slots, ClusterSlots):
            self.slots.adopt(grant.contended, grant.slots)

    def _renewal_due(self, now: float) -> bool:
        if now >= self._renew_at or not self.reservoir.granted:
            return True
        if self._learned != self._reported:
            return True  # the provider announced its limits: tell everyone now
        # A demand that grew is worth telling at once; one that shrank waits
        # for the regular renewal, so partition tails cause no messages.
        return now - self._renewed >= MIN_RENEW_INTERVAL and _weight(self.slots.peak) > self._demand

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
                if self._renewal_due(now):
                    try:
                        self._renew()
                        failures = 0
                    except Exception as exc:
                        failures += 1
                        logger.warning("dask-llm: budget renewal failed (%d in a row): %s", failures, exc)
                        self._wake.wait(min(5.0, 0.5 * failures))
            now = time.monotonic()
            self._samples.append((now, self.reservoir.taken))
            while now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            self.slots.reap(now)
            nap = 0.1 if idle_since is not None else min(1.0, self._renew_at - time.monotonic())
            self._wake.wait(max(0.05, nap))
            self._wake.clear()

    def _retire(self) -> bool:
        """Hand the share back and stop, unless work arrived meanwhile."""
        with self._keeper_lock:
            if self._users or self.reservoir.waiting:
                return False
            try:
                self.link.release()
            except Exception as exc:  # it expires on its own
                logger.warning("dask-llm: could not release a budget share: %s", exc)
            with self.reservoir.lock:
                self.reservoir.granted = False
            self.slots.reap(now=time.monotonic(), everything=True)
            self._keeper = None
            return True


def _weight(threads: int) -> int:
    """A process's demand as reported: its busy threads rounded up to a power
    of two, so that the usual small ups and downs cost no message."""
    return 1 << max(0, threads - 1).bit_length()


# -- the per-process registry --------------------------------------------------------

_budgets: dict[tuple[str, str | None], ProcessBudget] = {}
_budgets_lock = threading.Lock()


def _current_worker() -> Any:
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def process_budget(budget: Budget) -> ProcessBudget:
    """This process's limiter for ``budget`` (see :func:`~._budget.limiter_for`)."""
    worker = _current_worker()
    key = (budget.name, None if worker is None else worker.address)
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
            pb = _budgets[key] = _make(budget, worker)
        return pb


def _make(budget: Budget, worker: Any) -> ProcessBudget:
    mc = budget.max_concurrency
    if worker is None:
        slots: Slots = Slots() if mc is None else LocalSlots(mc)
        return ProcessBudget(budget, LocalLink(budget), slots)
    slots_name = None
    if mc is None:
        slots = Slots()
    else:
        from distributed import Semaphore

        # Created here, once per process, by name, bound to this worker's
        # connection; the name carries the cap, which must agree cluster-wide.
        slots_name = f"{budget.name}-slots-{mc}"
        semaphore = Semaphore(max_leases=mc, name=slots_name, scheduler_rpc=worker.scheduler, loop=worker.loop)
        slots = ClusterSlots(semaphore)
    return ProcessBudget(budget, SchedulerLink(worker, budget, slots_name), slots)
