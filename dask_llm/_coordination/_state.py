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
    messages: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seen: set[str] = dataclasses.field(default_factory=set)  # every holder so far


#: Runs whose claims on dataset files a coordinator remembers (the latest).
CLAIMED_RUNS = 64


class CoordinatorState:
    """Budgets and ledgers of every job that uses this coordinator."""

    def __init__(self) -> None:
        self.budgets: dict[str, _Budget] = {}
        self.ledgers: dict[str, Ledger] = {}
        self.partitions: dict[str, str] = {}  # content key -> the holder running it
        self.claims: dict[str, dict[str, bool]] = {}  # run epoch -> dataset file -> kept

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
        observed: float | None = None,
        in_use: int = 0,
        applied: int = -1,
    ) -> tuple[dict[str, Any], Pushes]:
        entry = self.budgets.get(name)
        if entry is None or (entry.limits != limits and not _live(entry, now)):
            # A name whose holders have all gone may be reused with new limits
            # (a notebook re-run), never while it is in use.
            entry = self.budgets[name] = _Budget(
                limits,
                Allocator(limits["rpm"], limits["tpm"], bool(limits["adaptive"]), now, limits["max_concurrency"]),
            )
        elif entry.limits != limits:
            raise ConfigError(
                f"budget {name!r} is in use on this cluster with limits {entry.limits}; "
                f"a job asked for {limits}. Give the budgets different names, or the same limits."
            )
        entry.messages["lease"] += 1
        entry.seen.add(holder)
        grant, revised = entry.allocator.lease(
            holder, demand, now, learned=learned, saturated=saturated, observed=observed,
            in_use=in_use, applied=applied,
        )  # fmt: skip
        return grant.to_msg(), self._pushes(name, entry, revised)

    def budget_release(self, now: float, holder: str, name: str) -> tuple[int, Pushes]:
        """Returns the last ``seq`` issued: grants pushed to the holder before
        its release (still travelling) are no newer, so it can ignore them."""
        entry = self.budgets.get(name)
        if entry is None:
            return -1, {}
        entry.messages["release"] += 1
        pushes = self._pushes(name, entry, entry.allocator.release(holder, now))
        return entry.allocator.seq, pushes

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
            "max_concurrency": alloc.max_concurrency,
            "slots": alloc.slot_stats(),
        }

    def remove_holder(self, now: float, holder: str) -> Pushes:
        """A holder left (a worker died): its rate shares go to the others at
        once, its concurrency slots once :meth:`tick` finds their hold over
        (call it after ``DEPARTED_HOLD``), and the partitions it was running
        may run elsewhere."""
        for key in [k for k, h in self.partitions.items() if h == holder]:
            del self.partitions[key]
        pushes: Pushes = {}
        for name, entry in self.budgets.items():
            if holder in entry.allocator.holders:
                pushes.update(self._pushes(name, entry, entry.allocator.remove(holder, now)))
        return pushes

    def tick(self, now: float) -> Pushes:
        """Grants due by the clock (see :meth:`Allocator.tick`)."""
        pushes: Pushes = {}
        for name, entry in self.budgets.items():
            pushes.update(self._pushes(name, entry, entry.allocator.tick(now)))
        return pushes

    def _pushes(self, name: str, entry: _Budget, grants: dict[str, Grant]) -> Pushes:
        entry.messages["push"] += len(grants)
        return {holder: (name, grant.to_msg()) for holder, grant in grants.items()}

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

    def dataset_claim(self, epoch: str, name: str, keep: bool) -> bool:
        """Whether the run ``epoch`` keeps (``keep``) or supersedes the
        dataset file ``name``, as its first claim said: a partition standing
        on a file and another deleting it never both go ahead."""
        claims = self.claims.get(epoch)
        if claims is None:
            claims = self.claims[epoch] = {}
            # A long-lived scheduler serves run after run: the oldest runs'
            # claims go. An old result computed again then claims as under a
            # new scheduler would (it writes under a name of its own).
            while len(self.claims) > CLAIMED_RUNS:
                del self.claims[next(iter(self.claims))]
        return claims.setdefault(name, keep) == keep

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
