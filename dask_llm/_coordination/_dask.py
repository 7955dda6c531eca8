"""A Dask worker's coordinator: the scheduler, through the worker's connection.

Requests are RPCs to the scheduler's :class:`~._plugin.CoordinatorPlugin`
(registered by the first worker that needs it), pushes arrive as stream
messages on the worker's connection, and events go out with
``worker.log_event``, which batches them on the worker's event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._protocol import OPS

__all__ = ["DaskWorkerCoordinator"]

_registered: set[str] = set()  # scheduler addresses this process registered the plugin with
_register_lock = threading.Lock()


class DaskWorkerCoordinator:
    """A :class:`~._protocol.Coordinator` for code running in a Dask worker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.holder = worker.address
        self._ensure_plugin()

    def _sync(self, method: Any, **kwargs: Any) -> Any:
        from distributed.utils import sync

        return sync(self.worker.loop, method, callback_timeout=60, **kwargs)

    def _ensure_plugin(self) -> None:
        from distributed.protocol.pickle import dumps

        from ._plugin import PLUGIN_NAME, CoordinatorPlugin

        key = self.worker.scheduler.address
        with _register_lock:
            if key in _registered:
                return
            self._sync(
                self.worker.scheduler.register_scheduler_plugin,
                plugin=dumps(CoordinatorPlugin()), name=PLUGIN_NAME, idempotent=True,
            )  # fmt: skip
            _registered.add(key)

    def call(self, op: str, **fields: Any) -> Any:
        if op not in OPS:
            raise ValueError(f"unknown dask-llm request {op!r}")
        return self._sync(getattr(self.worker.scheduler, f"dask_llm_{op}"), holder=self.holder, **fields)

    def subscribe(self, push: str, handler: Callable[..., None]) -> None:
        # Called on the worker's event loop; it must never raise, or the
        # worker's stream would close.
        def safe(**msg: Any) -> None:
            try:
                handler(**msg)
            except Exception:  # pragma: no cover - defensive
                import logging

                logging.getLogger("dask_llm").exception("dask-llm: could not apply a pushed message")

        self.worker.stream_handlers.setdefault(push, safe)

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        try:
            self.worker.log_event(topic, message)  # thread-safe: hops to the worker's loop
        except Exception:  # progress must never fail a paid row
            pass
