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

import numpy as np

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


@dataclasses.dataclass
class _FileClaims:
    """A run's claims on one earlier run's dataset file."""

    kept: np.ndarray  # int32 per row: the partition that stands on it (see parts), -1: none
    closed: tuple[int, bytes] | None = None  # the closer, and the positions it rewrites


@dataclasses.dataclass
class _RunClaims:
    files: dict[str, _FileClaims] = dataclasses.field(default_factory=dict)
    parts: dict[str, int] = dataclasses.field(default_factory=dict)  # partition label -> its number here
    done: set[int] = dataclasses.field(default_factory=set)  # partition numbers committed
    finisher: int | None = None

    def part(self, label: str) -> int:
        return self.parts.setdefault(label, len(self.parts))

    def file(self, name: str, size: int) -> _FileClaims:
        file = self.files.get(name)
        if file is None or len(file.kept) != size:
            file = self.files[name] = _FileClaims(np.full(size, -1, dtype=np.int32))
        return file


#: Runs whose claims on dataset files a coordinator remembers (the latest).
CLAIMED_RUNS = 64


class CoordinatorState:
    """Budgets and ledgers of every job that uses this coordinator."""

    def __init__(self) -> None:
        self.budgets: dict[str, _Budget] = {}
        self.ledgers: dict[str, Ledger] = {}
        self.partitions: dict[str, str] = {}  # content key -> the holder running it
        self.claims: dict[str, _RunClaims] = {}  # run epoch -> its claims on dataset files

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

    # -- dataset files ---------------------------------------------------------------

    def _run_claims(self, epoch: str) -> _RunClaims:
        claims = self.claims.get(epoch)
        if claims is None:
            claims = self.claims[epoch] = _RunClaims()
            # A long-lived scheduler serves run after run: the oldest runs'
            # claims go. An old result computed again then claims as under a
            # new scheduler would.
            while len(self.claims) > CLAIMED_RUNS:
                del self.claims[next(iter(self.claims))]
        return claims

    def dataset_keep(self, epoch: str, name: str, part: str, size: int, positions: bytes | None = None) -> bytes:
        """Partition ``part`` of run ``epoch`` stands on the rows at
        ``positions`` (int32; ``None``: all ``size`` rows) of an earlier run's
        dataset file ``name``: it will not write them itself. A row is kept
        for one partition only (an exact duplicate in another partition
        writes its own copy), and once the file is closed only those it kept
        before (they moved to the closer's file). Answers which of the
        positions it keeps (one byte each, 0 or 1)."""
        run = self._run_claims(epoch)
        file, who = run.file(name, size), run.part(part)
        at = np.arange(size, dtype=np.int32) if positions is None else np.frombuffer(positions, dtype=np.int32)
        if file.closed is not None:
            # Rows it stood on before the file closed live on in the closer's
            # new file (a partition computed again: they are still its own).
            return (file.kept[at] == who).astype(np.uint8).tobytes()
        ok = (file.kept[at] == -1) | (file.kept[at] == who)
        file.kept[at[ok]] = who
        return ok.astype(np.uint8).tobytes()

    def dataset_close(
        self, epoch: str, name: str, part: str, size: int, into: str, unless_kept: bool = False
    ) -> bytes | None:
        """Partition ``part`` of run ``epoch`` takes the earlier run's file
        ``name`` away (it holds a stale row): no row of it is kept from now on, and
        the closer writes the rows kept so far into the file ``into``, where
        they stay kept for the same partitions. Answers those rows' positions
        (int32), again to the same closer (a restarted task); ``None`` when
        another partition closed it (it does the writing), or, with
        ``unless_kept``, when every row is kept (nothing to close)."""
        run = self._run_claims(epoch)
        file, who = run.file(name, size), run.part(part)
        if file.closed is not None:
            return file.closed[1] if file.closed[0] == who else None
        kept = np.flatnonzero(file.kept >= 0).astype(np.int32)
        if unless_kept and len(kept) == size:
            return None
        file.closed = (who, kept.tobytes())
        if len(kept):
            run.file(into, len(kept)).kept[:] = file.kept[kept]
        return file.closed[1]

    def dataset_done(self, epoch: str, number: int, total: int) -> bool:
        """Partition ``number`` of the ``total`` of run ``epoch`` has committed;
        ``True`` for the partition that completes the set (again, if it asks
        again): it finishes the run's dataset (:meth:`dataset_close` of the
        earlier runs' files no partition stands on wholly)."""
        run = self._run_claims(epoch)
        run.done.add(number)
        if total <= 0 or len(run.done) < total or not set(range(total)) <= run.done:
            return False
        if run.finisher is None:
            run.finisher = number
        return run.finisher == number

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
