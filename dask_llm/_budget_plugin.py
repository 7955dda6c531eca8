"""The scheduler's side of cluster budgets: one :class:`Allocator` per name.

:class:`BudgetPlugin` is a ``SchedulerPlugin`` that adds RPC handlers, as
distributed's own shuffle plugin does. Worker processes register it
themselves on first use (idempotent, by name), so it does not matter which
client built the graph. Handlers:

``dask_llm_budget_lease``
    renew a worker's share (and check that its limits agree with the
    budget's other holders);
``dask_llm_budget_release``
    a worker went idle: share its part among the others;
``dask_llm_budget_penalize``
    a 429 answered a worker: every holder pauses;
``dask_llm_budget_stats``
    message counts and current limits, for tests and benchmarks.

Revised grants go to the affected workers over their existing stream (op
:data:`PUSH_OP`), so a newcomer's share is carved out of the others at once
and a cool-down reaches everyone within a message's travel time. A worker
that leaves the cluster is dropped from every budget immediately.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from ._budget_alloc import Allocator, Grant
from ._errors import ConfigError

__all__ = ["PLUGIN_NAME", "PUSH_OP", "BudgetPlugin"]

logger = logging.getLogger("dask_llm.budget")

PLUGIN_NAME = "dask-llm-budget"
#: Stream op of a pushed grant; workers install its handler before their
#: first lease, and only holders are pushed to.
PUSH_OP = "dask-llm-budget-grant"
#: Seconds between two looks at whether workers wait for concurrency slots.
CONTENTION_POLL = 0.2


@dataclasses.dataclass
class _Entry:
    limits: dict[str, Any]
    allocator: Allocator
    slots: str | None  # name of the concurrency semaphore, if any
    messages: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seen: set[str] = dataclasses.field(default_factory=set)  # every holder so far
    contended: bool = False  # as last told to the holders


class BudgetPlugin(SchedulerPlugin):
    """Holds every budget of the cluster, keyed by budget name."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.budgets: dict[str, _Entry] = {}
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        self.scheduler = scheduler
        # Whether workers wait for concurrency slots changes when leases come
        # and go; a cheap local poll tells the holders only when it flips, so
        # that spare slots move to where they are wanted within a fraction of
        # a second, and linger in their process otherwise.
        pc = PeriodicCallback(self._check_contention, CONTENTION_POLL * 1000)
        scheduler.periodic_callbacks["dask-llm-budget-contention"] = pc
        pc.start()
        scheduler.handlers.update(
            {
                "dask_llm_budget_lease": self.lease,
                "dask_llm_budget_release": self.release,
                "dask_llm_budget_penalize": self.penalize,
                "dask_llm_budget_stats": self.stats,
            }
        )

    # -- handlers ------------------------------------------------------------

    def lease(
        self,
        name: str,
        limits: dict[str, Any],
        worker: str,
        demand: float,
        learned: dict[str, float] | None = None,
        saturated: bool = False,
        observed: float = 0.0,
        slots: str | None = None,
    ) -> dict[str, Any]:
        now = time.monotonic()
        entry = self.budgets.get(name)
        if entry is None or (entry.limits != limits and not self._live(entry, now)):
            # A name whose holders have all gone may be reused with new limits
            # (a notebook re-run), never while it is in use.
            entry = self.budgets[name] = _Entry(
                limits,
                Allocator(limits["rpm"], limits["tpm"], bool(limits["adaptive"]), now, limits["max_concurrency"]),
                slots,
            )
        elif entry.limits != limits:
            raise ConfigError(
                f"budget {name!r} is in use on this cluster with limits {entry.limits}; "
                f"a job asked for {limits}. Give the budgets different names, or the same limits."
            )
        entry.messages["lease"] += 1
        entry.seen.add(worker)
        grant, revised = entry.allocator.lease(
            worker, demand, now, learned=learned, saturated=saturated, observed=observed
        )
        self._push(name, entry, revised)
        return dataclasses.replace(grant, contended=self._contended(entry)).to_msg()

    def release(self, name: str, worker: str) -> None:
        entry = self.budgets.get(name)
        if entry is not None:
            entry.messages["release"] += 1
            self._push(name, entry, entry.allocator.release(worker, time.monotonic()))

    def penalize(self, name: str, worker: str, seconds: float, observed: float | None = None) -> None:
        entry = self.budgets.get(name)
        if entry is not None:
            entry.messages["penalize"] += 1
            self._push(name, entry, entry.allocator.penalize(worker, seconds, time.monotonic(), observed))

    def stats(self, name: str) -> dict[str, Any] | None:
        entry = self.budgets.get(name)
        if entry is None:
            return None
        alloc = entry.allocator
        return {
            "messages": dict(entry.messages),
            "rpm": alloc.rpm,
            "tpm": alloc.tpm,
            "holders": sorted(alloc.holders),
            "seen": sorted(entry.seen),
        }

    # -- scheduler events ----------------------------------------------------

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        now = time.monotonic()
        for name, entry in self.budgets.items():
            if worker in entry.allocator.holders:
                self._push(name, entry, entry.allocator.release(worker, now))

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _live(entry: _Entry, now: float) -> bool:
        return any(rec.expires > now for rec in entry.allocator.holders.values())

    def _check_contention(self) -> None:
        now = time.monotonic()
        for name, entry in self.budgets.items():
            if entry.slots is None or not entry.allocator.holders:
                continue
            contended = self._contended(entry)
            if contended != entry.contended:
                entry.contended = contended
                alloc = entry.allocator
                alloc._expire(now)
                self._push(name, entry, {h: alloc._grant(h, now) for h in alloc.holders})

    def _contended(self, entry: _Entry) -> bool:
        if entry.slots is None:
            return False
        ext = self.scheduler.extensions.get("semaphores")
        return bool(ext is not None and ext.metrics["pending"].get(entry.slots, 0) > 0)

    def _push(self, name: str, entry: _Entry, grants: dict[str, Grant]) -> None:
        contended = self._contended(entry) if grants else False
        for worker, grant in grants.items():
            # An unknown op would break the worker's stream: push only to
            # workers that are still connected (holders installed the handler).
            if worker in self.scheduler.stream_comms:
                entry.messages["push"] += 1
                msg = dataclasses.replace(grant, contended=contended).to_msg()
                self.scheduler.worker_send(worker, {"op": PUSH_OP, "name": name, "grant": msg})
