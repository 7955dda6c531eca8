"""The scheduler's side of spend caps: one :class:`~._spend.Ledger` per cap.

The same pattern as the budget's plugin (:mod:`._budget_plugin`): a
``SchedulerPlugin`` that adds RPC handlers, registered by the worker
processes themselves on first use (idempotent, by name), so it does not
matter which client built the graph. Handlers:

``dask_llm_spend_reserve``
    reserve one attempt's estimate: ``"go"``, ``"wait"`` or ``"exhausted"``;
``dask_llm_spend_settle``
    replace a reservation by what the attempt was billed;
``dask_llm_spend_stats``
    the ledger, for tests, benchmarks and the run summary.

The ledger must be exact, so every attempt costs two scheduler round trips
(~1 ms each, against calls that take seconds); only runs with a cap pay them.
"""

from __future__ import annotations

import threading
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from ._spend import Ledger, SpendCap, Verdict

__all__ = ["PLUGIN_NAME", "SchedulerCounter", "SpendPlugin", "scheduler_counter"]

PLUGIN_NAME = "dask-llm-spend"


class SpendPlugin(SchedulerPlugin):
    """Holds every spend cap of the cluster, keyed by cap name."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.ledgers: dict[str, Ledger] = {}

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers.update(
            {
                "dask_llm_spend_reserve": self.reserve,
                "dask_llm_spend_settle": self.settle,
                "dask_llm_spend_stats": self.stats,
            }
        )

    def _ledger(self, name: str, max_cost: float | None, max_tokens: int | None) -> Ledger:
        ledger = self.ledgers.get(name)
        if ledger is None:
            ledger = self.ledgers[name] = Ledger(max_cost, max_tokens)
        return ledger

    # Handlers run on the scheduler's event loop, one at a time: no lock needed.
    def reserve(self, name: str, max_cost: float | None, max_tokens: int | None, cost: float, tokens: int) -> str:
        return self._ledger(name, max_cost, max_tokens).reserve(cost, tokens).value

    def settle(
        self, name: str, max_cost: float | None, max_tokens: int | None,
        reserved_cost: float, reserved_tokens: int, cost: float, tokens: int,
    ) -> None:  # fmt: skip
        self._ledger(name, max_cost, max_tokens).settle(reserved_cost, reserved_tokens, cost, tokens)

    def stats(self, name: str) -> dict[str, Any] | None:
        ledger = self.ledgers.get(name)
        return None if ledger is None else ledger.snapshot()


_registered: set[str] = set()  # scheduler addresses this process registered the plugin with
_register_lock = threading.Lock()


class SchedulerCounter:
    """A :class:`~._spend.SpendCounter` whose ledger is on the scheduler."""

    def __init__(self, worker: Any, cap: SpendCap) -> None:
        self.worker = worker
        self.cap = cap
        self._ensure_plugin()

    def _call(self, op: str, **kwargs: Any) -> Any:
        from distributed.utils import sync

        return sync(self.worker.loop, getattr(self.worker.scheduler, op), callback_timeout=60, **kwargs)

    def _ensure_plugin(self) -> None:
        from distributed.protocol.pickle import dumps

        key = self.worker.scheduler.address
        with _register_lock:
            if key in _registered:
                return
            self._call("register_scheduler_plugin", plugin=dumps(SpendPlugin()), name=PLUGIN_NAME, idempotent=True)
            _registered.add(key)

    def _cap(self) -> dict[str, Any]:
        return {"name": self.cap.name, "max_cost": self.cap.max_cost, "max_tokens": self.cap.max_tokens}

    def reserve(self, cost: float, tokens: int) -> Verdict:
        return Verdict(self._call("dask_llm_spend_reserve", cost=cost, tokens=tokens, **self._cap()))

    def settle(self, reserved_cost: float, reserved_tokens: int, cost: float, tokens: int) -> None:
        self._call(
            "dask_llm_spend_settle", reserved_cost=reserved_cost, reserved_tokens=reserved_tokens,
            cost=cost, tokens=tokens, **self._cap(),
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        return self._call("dask_llm_spend_stats", name=self.cap.name) or Ledger(None, None).snapshot()


def scheduler_counter(worker: Any, cap: SpendCap) -> SchedulerCounter:
    """The counter of ``cap`` in this worker process."""
    return SchedulerCounter(worker, cap)


def cluster_spend(client: Any, cap: SpendCap) -> dict[str, Any] | None:
    """The scheduler's ledger of ``cap`` as seen from a client (``None``
    when no worker has used the cap yet)."""

    def _stats(dask_scheduler: Any) -> Any:
        plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
        return None if plugin is None else plugin.stats(cap.name)

    return client.run_on_scheduler(_stats)
