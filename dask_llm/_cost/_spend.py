"""``SpendCap``: a ceiling on what one run may spend, across the cluster.

``enrich(..., spend_cap=SpendCap(max_cost=5.0))`` stops calling the model
once the run has spent 5 USD; ``SpendCap(max_tokens=2_000_000)`` once it
has been billed two million tokens (prompt plus completion). The name
``spend_cap`` is deliberate: ``enrich(max_tokens=...)`` already means the
completion cap of each call, passed to the model.

How it holds across the cluster: one :class:`Ledger` per cap, in one place:
the job's coordinator (the Dask scheduler on a cluster, this process
otherwise; see ``dask_llm._coordination``). Before each attempt the runner *reserves* the attempt's
estimate (prompt tokens by chars/4, plus ``max_tokens`` or 256 for the
answer); after it, it *settles* the reservation with the ``usage`` the
provider reported. An attempt starts only if what is spent, plus what is
reserved, plus its own estimate fits under the cap, so what is billed can
exceed the cap only by how far the calls in flight exceed their estimates.

Once a request no longer fits even with nothing in flight, the cap is
*exhausted* for good: every row not yet called gets the error
``"budget exhausted: ..."`` (without a call), finished rows are kept, and
with a checkpoint those rows are left for a later run, so a resume with a
higher cap (a new ``SpendCap``) calls exactly them.
"""

from __future__ import annotations

import enum
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._errors import ConfigError
from ._pricing import Price

__all__ = [
    "BUDGET_EXHAUSTED",
    "Charge",
    "CoordinatedCounter",
    "Ledger",
    "SpendCap",
    "SpendCounter",
    "SpendGate",
    "Verdict",
    "counter_for",
    "exhausted_message",
]

#: Start of the error of a row left uncalled because the cap was reached.
BUDGET_EXHAUSTED = "budget exhausted"


@dataclass(frozen=True)
class SpendCap:
    """The most one run may spend, in USD and/or tokens, cluster-wide.

    >>> cap = SpendCap(max_cost=2.50)                           # doctest: +SKIP
    >>> out = dask_llm.enrich(ddf, ..., spend_cap=cap)         # doctest: +SKIP

    Parameters
    ----------
    max_cost : float, optional
        USD, priced with the model's :class:`~dask_llm.Price` (from
        ``enrich(prices=...)`` or the built-in table; a model with no
        known price is refused).
    max_tokens : int, optional
        Prompt plus completion tokens billed.
    name : str, optional
        The cap's identity on the cluster; by default each ``SpendCap``
        object is its own cap. Passing one object to several enrichments
        makes them share it.

    Raises
    ------
    ConfigError
        Neither limit is set, or one is not positive.
    """

    max_cost: float | None = None
    max_tokens: int | None = None
    name: str = field(default_factory=lambda: f"dask-llm-spend-{uuid.uuid4().hex[:16]}")

    def __post_init__(self) -> None:
        if self.max_cost is None and self.max_tokens is None:
            raise ConfigError("SpendCap needs max_cost= and/or max_tokens=")
        mc = self.max_cost
        if mc is not None and (
            isinstance(mc, bool) or not isinstance(mc, (int, float)) or not (math.isfinite(mc) and mc > 0)
        ):
            raise ConfigError(f"SpendCap.max_cost must be a positive number of USD, got {mc!r}")
        mt = self.max_tokens
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise ConfigError(f"SpendCap.max_tokens must be a positive integer, got {mt!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"SpendCap.name must be a non-empty string, got {self.name!r}")

    def describe(self) -> str:
        parts = []
        if self.max_cost is not None:
            parts.append(f"max_cost=${self.max_cost:g}")
        if self.max_tokens is not None:
            parts.append(f"max_tokens={self.max_tokens:,}")
        return ", ".join(parts)


class Verdict(enum.Enum):
    """The answer to a reservation."""

    GO = "go"  # reserved: make the call, then settle
    WAIT = "wait"  # fits once calls in flight settle: ask again shortly
    EXHAUSTED = "exhausted"  # will never fit: do not call


class Ledger:
    """Spent and reserved amounts of one cap. Pure bookkeeping, not thread
    safe: the caller serializes (a lock here, the event loop on the scheduler).
    """

    def __init__(self, max_cost: float | None, max_tokens: int | None) -> None:
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.spent_cost = 0.0
        self.spent_tokens = 0
        self.reserved_cost = 0.0
        self.reserved_tokens = 0
        self.exhausted = False
        self.calls = 0

    def _fits(self, cost: float, tokens: int) -> bool:
        # A small tolerance so that float rounding never refuses the exact cap.
        if self.max_cost is not None and cost > self.max_cost * (1 + 1e-9):
            return False
        return self.max_tokens is None or tokens <= self.max_tokens

    def reserve(self, cost: float, tokens: int) -> Verdict:
        if self.exhausted or not self._fits(self.spent_cost + cost, self.spent_tokens + tokens):
            self.exhausted = True
            return Verdict.EXHAUSTED
        if not self._fits(
            self.spent_cost + self.reserved_cost + cost, self.spent_tokens + self.reserved_tokens + tokens
        ):
            return Verdict.WAIT
        self.reserved_cost += cost
        self.reserved_tokens += tokens
        self.calls += 1
        return Verdict.GO

    def settle(self, reserved_cost: float, reserved_tokens: int, cost: float, tokens: int) -> None:
        self.reserved_cost = max(0.0, self.reserved_cost - reserved_cost)
        self.reserved_tokens = max(0, self.reserved_tokens - reserved_tokens)
        self.spent_cost += cost
        self.spent_tokens += tokens

    def snapshot(self) -> dict[str, Any]:
        return {
            "spent_cost": self.spent_cost,
            "spent_tokens": self.spent_tokens,
            "reserved_cost": self.reserved_cost,
            "reserved_tokens": self.reserved_tokens,
            "exhausted": self.exhausted,
            "calls": self.calls,
        }


class SpendCounter(Protocol):
    """What the runner talks to: one per cap and process."""

    def reserve(self, cost: float, tokens: int) -> Verdict: ...
    def settle(self, reserved_cost: float, reserved_tokens: int, cost: float, tokens: int) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


class CoordinatedCounter:
    """A cap's ledger in the job's coordinator (see ``dask_llm._coordination``):
    the scheduler on a cluster, this process otherwise."""

    def __init__(self, coordinator: Any, cap: SpendCap) -> None:
        self.coordinator = coordinator
        self.cap = {"name": cap.name, "max_cost": cap.max_cost, "max_tokens": cap.max_tokens}

    def reserve(self, cost: float, tokens: int) -> Verdict:
        return Verdict(self.coordinator.call("spend_reserve", cost=cost, tokens=tokens, **self.cap))

    def settle(self, reserved_cost: float, reserved_tokens: int, cost: float, tokens: int) -> None:
        self.coordinator.call(
            "spend_settle", reserved_cost=reserved_cost, reserved_tokens=reserved_tokens,
            cost=cost, tokens=tokens, **self.cap,
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        return self.coordinator.call("spend_stats", name=self.cap["name"]) or Ledger(None, None).snapshot()


def counter_for(cap: SpendCap, coordinator: Any) -> SpendCounter:
    """The counter of ``cap`` for calls made from this process, its ledger
    in ``coordinator``."""
    return CoordinatedCounter(coordinator, cap)


def exhausted_message(cap: SpendCap, snapshot: dict[str, Any] | None = None) -> str:
    """The error of a row left uncalled."""
    spent = ""
    if snapshot is not None:
        spent = f"; spent ${snapshot['spent_cost']:.4f}, {snapshot['spent_tokens']:,} tokens"
    return f"{BUDGET_EXHAUSTED}: the run's spend cap ({cap.describe()}) is reached{spent}; row not called"


@dataclass(frozen=True)
class Charge:
    """What one attempt reserves, or what it was billed: USD and tokens."""

    cost: float
    tokens: int

    @classmethod
    def of(cls, price: Price | None, prompt_tokens: int, completion_tokens: int) -> Charge:
        cost = price.cost(prompt_tokens, completion_tokens) if price is not None else 0.0
        return cls(cost, prompt_tokens + completion_tokens)


#: Seconds between two asks while the cap waits for calls in flight to settle.
WAIT_POLL = 0.05
WAIT_POLL_MAX = 0.5


class SpendGate:
    """The runner's side of a cap, for one partition: reserve before an
    attempt (waiting while calls in flight may free room), settle after.

    Parameters
    ----------
    cap : SpendCap, optional
        ``None``: no cap; every reservation is free and immediate.
    counter : SpendCounter, optional
        Where the ledger lives (:func:`counter_for`, from the task's thread).
    price : Price, optional
        The model's price; needed for ``max_cost``.
    stop : threading.Event
        Set when the partition stops: a waiting reservation gives up.
    """

    def __init__(
        self,
        cap: SpendCap | None,
        counter: SpendCounter | None,
        price: Price | None,
        stop: threading.Event,
    ) -> None:
        self.cap = cap
        self.counter = counter
        self.price = price
        self.stop = stop
        self._exhausted = False  # final: spares the ledger a round trip per row

    def reserve(self, prompt_tokens: int, completion_tokens: int) -> Charge | None:
        """Reserve an attempt estimated at so many tokens; ``None`` when the
        cap is exhausted (or the partition stopped while waiting)."""
        charge = Charge.of(self.price, prompt_tokens, completion_tokens)
        if self.cap is None or self.counter is None:
            return charge
        if self._exhausted:
            return None
        pause = WAIT_POLL
        while True:
            verdict = self.counter.reserve(charge.cost, charge.tokens)
            if verdict is Verdict.GO:
                return charge
            if verdict is Verdict.EXHAUSTED:
                self._exhausted = True
                return None
            if self.stop.wait(pause):
                return None
            pause = min(pause * 2, WAIT_POLL_MAX)

    def settle(self, charge: Charge, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Replace ``charge`` by what the attempt was billed (nothing for an
        attempt that failed before the provider answered)."""
        if self.cap is None or self.counter is None:
            return
        used = Charge.of(self.price, prompt_tokens or 0, completion_tokens or 0)
        self.counter.settle(charge.cost, charge.tokens, used.cost, used.tokens)

    def exhausted_message(self) -> str:
        assert self.cap is not None
        try:
            snapshot = self.counter.snapshot() if self.counter is not None else None
        except Exception:  # the message must not fail the row
            snapshot = None
        return exhausted_message(self.cap, snapshot)
