"""What a coordinator holds: every budget's allocator and every spend cap's
ledger, keyed by name, and the answers to the protocol's requests.

Pure bookkeeping on a caller-supplied clock, with no transport and no lock:
the Dask scheduler's plugin serializes calls on its event loop, the local
coordinator under a lock. Every answer that changes other holders' grants
also returns those grants, for the transport to push.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from .._budget._alloc import Allocator, Grant
from .._cost._spend import Ledger
from .._errors import ConfigError

__all__ = ["CoordinatorState", "Pushes"]

#: Revised grants to push: holder -> (budget name, grant message).
Pushes = dict[str, tuple[str, dict[str, Any]]]


@dataclasses.dataclass
class _Budget:
    limits: dict[str, Any]
    allocator: Allocator
    slots: str | None  # name of the concurrency semaphore, if any
    messages: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seen: set[str] = dataclasses.field(default_factory=set)  # every holder so far
    contended: bool = False  # as last told to the holders


class CoordinatorState:
    """Budgets and ledgers of every job that uses this coordinator.

    Parameters
    ----------
    contended : callable, optional
        ``contended(slots_name)``: whether holders wait for concurrency slots
        of that semaphore (the scheduler knows; in-process, nobody waits
        across processes).
    """

    def __init__(self, contended: Callable[[str], bool] | None = None) -> None:
        self.budgets: dict[str, _Budget] = {}
        self.ledgers: dict[str, Ledger] = {}
        self.partitions: dict[str, str] = {}  # content key -> the holder running it
        self._contended = contended or (lambda name: False)

    # -- budgets -----------------------------------------------------------------

    def budget_lease(
        self,
        now: float,
        holder: str,
        name: str,
        limits: dict[str, Any],
        demand: float,
        learned: dict[str, float] | None = None,
        saturated: bool = False,
        observed: float = 0.0,
        slots: str | None = None,
    ) -> tuple[dict[str, Any], Pushes]:
        entry = self.budgets.get(name)
        if entry is None or (entry.limits != limits and not _live(entry, now)):
            # A name whose holders have all gone may be reused with new limits
            # (a notebook re-run), never while it is in use.
            entry = self.budgets[name] = _Budget(
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
        entry.seen.add(holder)
        grant, revised = entry.allocator.lease(
            holder, demand, now, learned=learned, saturated=saturated, observed=observed
        )
        contended = self.contended(entry)
        return dataclasses.replace(grant, contended=contended).to_msg(), self._pushes(name, entry, revised)

    def budget_release(self, now: float, holder: str, name: str) -> Pushes:
        entry = self.budgets.get(name)
        if entry is None:
            return {}
        entry.messages["release"] += 1
        return self._pushes(name, entry, entry.allocator.release(holder, now))

    def budget_penalize(
        self,
        now: float,
        holder: str,
        name: str,
        seconds: float,
        observed: float | None = None,
        sent: float | None = None,
    ) -> Pushes:
        entry = self.budgets.get(name)
        if entry is None:
            return {}
        entry.messages["penalize"] += 1
        return self._pushes(name, entry, entry.allocator.penalize(holder, seconds, now, observed, sent))

    def budget_stats(self, name: str) -> dict[str, Any] | None:
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

    def remove_holder(self, now: float, holder: str) -> Pushes:
        """A holder left (a worker died): its shares go to the others at once,
        and the partitions it was running may run elsewhere."""
        for key in [k for k, h in self.partitions.items() if h == holder]:
            del self.partitions[key]
        pushes: Pushes = {}
        for name, entry in self.budgets.items():
            if holder in entry.allocator.holders:
                pushes.update(self._pushes(name, entry, entry.allocator.release(holder, now)))
        return pushes

    def check_contention(self, now: float) -> Pushes:
        """Grants to push to the holders of budgets whose slot contention
        flipped since it was last told (spare slots then move to where they
        are wanted within a fraction of a second)."""
        pushes: Pushes = {}
        for name, entry in self.budgets.items():
            if entry.slots is None or not entry.allocator.holders:
                continue
            contended = self.contended(entry)
            if contended != entry.contended:
                entry.contended = contended
                alloc = entry.allocator
                alloc._expire(now)
                pushes.update(self._pushes(name, entry, {h: alloc._grant(h, now) for h in alloc.holders}))
        return pushes

    def contended(self, entry: _Budget) -> bool:
        return entry.slots is not None and self._contended(entry.slots)

    def _pushes(self, name: str, entry: _Budget, grants: dict[str, Grant]) -> Pushes:
        contended = self.contended(entry) if grants else False
        out: Pushes = {}
        for holder, grant in grants.items():
            entry.messages["push"] += 1
            out[holder] = (name, dataclasses.replace(grant, contended=contended).to_msg())
        return out

    # -- partitions ------------------------------------------------------------------

    def partition_lease(self, holder: str, key: str) -> bool:
        """Whether ``holder`` may run the partition ``key`` now: one holder at
        a time, so that a speculative copy or a second action over the same
        rows waits and then restores what the first one paid for."""
        owner = self.partitions.setdefault(key, holder)
        return owner == holder

    def partition_release(self, holder: str, key: str) -> None:
        if self.partitions.get(key) == holder:
            del self.partitions[key]

    # -- spend caps ----------------------------------------------------------------

    def _ledger(self, name: str, max_cost: float | None, max_tokens: int | None) -> Ledger:
        ledger = self.ledgers.get(name)
        if ledger is None:
            ledger = self.ledgers[name] = Ledger(max_cost, max_tokens)
        return ledger

    def spend_reserve(self, name: str, max_cost: float | None, max_tokens: int | None, cost: float, tokens: int) -> str:
        return self._ledger(name, max_cost, max_tokens).reserve(cost, tokens).value

    def spend_settle(
        self, name: str, max_cost: float | None, max_tokens: int | None,
        reserved_cost: float, reserved_tokens: int, cost: float, tokens: int,
    ) -> None:  # fmt: skip
        self._ledger(name, max_cost, max_tokens).settle(reserved_cost, reserved_tokens, cost, tokens)

    def spend_stats(self, name: str) -> dict[str, Any] | None:
        ledger = self.ledgers.get(name)
        return None if ledger is None else ledger.snapshot()


def _live(entry: _Budget, now: float) -> bool:
    return any(rec.expires > now for rec in entry.allocator.holders.values())
