"""The Dask scheduler as coordinator: a ``SchedulerPlugin`` hosting a
:class:`~._state.CoordinatorState`.

It adds one RPC handler per request of the protocol (``dask_llm_<op>``), as
distributed's own shuffle plugin adds its handlers, and pushes revised
grants to the holders over their existing stream: a worker's batched
stream, or (for clients, e.g. Spark executors) the client's report stream.
Worker processes register it themselves on first use (idempotent, by
name), so it does not matter which client built the graph. A worker or
client that leaves the cluster is dropped from every budget immediately.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from .._budget._alloc import DEPARTED_HOLD, RISE_DELAY
from ._protocol import OPS, PUSH_GRANT
from ._state import CoordinatorState, Pushes

__all__ = ["PLUGIN_NAME", "CoordinatorPlugin"]

logger = logging.getLogger("dask_llm.coordination")

PLUGIN_NAME = "dask-llm"


class CoordinatorPlugin(SchedulerPlugin):
    """Every budget and spend cap of the cluster, keyed by name."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        from .._observe import JobBoard

        self.state = CoordinatorState()
        self.board = JobBoard()
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update({f"dask_llm_{op}": self._handler(op) for op in OPS})
        self._observe(scheduler)

    def _observe(self, scheduler: Any) -> None:
        """The dashboard page and the Prometheus metrics (see :mod:`dask_llm._observe`).

        They are views: whatever goes wrong here is logged, never a reason
        for the plugin, or a job, to fail.
        """
        from .._observe import install_routes
        from .._observe._metrics import register

        try:
            # What the cluster said before this plugin existed (the broker
            # keeps the last events of each topic): jobs announced or running.
            for topic, events in scheduler.get_events().items():
                if isinstance(topic, str) and topic.startswith("dask-llm-"):
                    for _, msg in events:
                        self.board.event(topic, msg)
            install_routes(scheduler, self.name)
            register(self)
        except Exception:
            logger.warning("dask-llm: no dashboard page or metrics on this scheduler", exc_info=True)

    async def close(self) -> None:
        from .._observe._metrics import unregister

        unregister(self)

    def log_event(self, topic: str | Any, msg: Any) -> None:
        """Every event of the cluster passes here: the progress of dask-llm's jobs feeds the board."""
        if isinstance(topic, str) and topic.startswith("dask-llm-"):
            self.board.event(topic, msg)

    def _handler(self, op: str) -> Any:
        def handle(holder: str = "", **fields: Any) -> Any:
            return self.handle(op, holder, **fields)

        handle.__name__ = f"dask_llm_{op}"
        return handle

    def handle(self, op: str, holder: str, **fields: Any) -> Any:
        """Answer request ``op`` from ``holder`` (runs on the event loop, one at a time)."""
        state, now = self.state, time.monotonic()
        if op == "budget_lease":
            grant, pushes = state.budget_lease(now, holder, **fields)
            self._push(pushes, exclude=holder)
            return grant
        if op == "budget_release":
            seq, pushes = state.budget_release(now, holder, **fields)
            self._push(pushes, exclude=holder)
            self._tick_after(RISE_DELAY)  # the others' larger parts, coalesced
            return seq
        if op == "budget_penalize":
            self._push(state.budget_penalize(now, holder, **fields), exclude=holder)
            return None
        if op == "budget_stats":
            return state.budget_stats(**fields)
        if op == "spend_reserve":
            return state.spend_reserve(**fields)
        if op == "spend_settle":
            return state.spend_settle(**fields)
        if op == "spend_stats":
            return state.spend_stats(**fields)
        if op == "partition_lease":
            return state.partition_lease(holder, **fields)
        if op == "partition_release":
            return state.partition_release(holder, **fields)
        if op in ("dataset_keep", "dataset_close", "dataset_done"):
            return getattr(state, op)(**fields)
        raise ValueError(f"unknown dask-llm request {op!r}")

    # -- scheduler events ----------------------------------------------------

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self._remove(worker)

    def remove_client(self, scheduler: Any, client: str) -> None:
        self._remove(client)

    def _remove(self, holder: str) -> None:
        self._push(self.state.remove_holder(time.monotonic(), holder))
        # Its slots come free after the hold; the holders waiting for them are told then.
        self._tick_after(DEPARTED_HOLD)

    def _tick_after(self, seconds: float) -> None:
        from tornado.ioloop import IOLoop

        IOLoop.current().call_later(seconds + 0.05, lambda: self._push(self.state.tick(time.monotonic())))

    # -- helpers ---------------------------------------------------------------

    def _push(self, pushes: Pushes, exclude: str | None = None) -> None:
        scheduler = self.scheduler
        for holder, (name, grant) in pushes.items():
            if holder == exclude:
                continue
            msg = {"op": PUSH_GRANT, "name": name, "grant": grant}
            # An unknown op would break a worker's stream: push only to
            # holders still connected (holders installed the handler).
            if holder in scheduler.stream_comms:
                scheduler.worker_send(holder, msg)
            elif holder in getattr(scheduler, "client_comms", {}):
                scheduler.client_comms[holder].send(msg)
