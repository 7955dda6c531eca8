"""The coordinator of a process without a cluster: the state lives here.

pandas frames and dask's threaded and synchronous schedulers run every
partition in this process, so their budgets, ledgers and progress need no
messages: a call is a method call under a lock, a push a direct call, an
event a call of the handler the driver registered for the topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ._protocol import PUSH_GRANT
from ._state import CoordinatorState

__all__ = ["LocalCoordinator", "local_coordinator", "on_topic"]

_topic_handlers: dict[str, Callable[[dict[str, Any]], None]] = {}


def on_topic(topic: str, handler: Callable[[dict[str, Any]], None] | None) -> None:
    """Have ``handler`` receive the events published on ``topic`` in this
    process (``None``: stop)."""
    if handler is None:
        _topic_handlers.pop(topic, None)
    else:
        _topic_handlers[topic] = handler


class LocalCoordinator:
    """A :class:`~._protocol.Coordinator` whose state is in this process."""

    holder = "local"

    def __init__(self) -> None:
        self.state = CoordinatorState()
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[Callable[..., None]]] = {}

    def call(self, op: str, **fields: Any) -> Any:
        now = time.monotonic()
        answer: Any = None
        with self._lock:
            if op == "budget_lease":
                answer, pushes = self.state.budget_lease(now, self.holder, **fields)
            elif op == "budget_release":
                answer, pushes = self.state.budget_release(now, self.holder, **fields)
            elif op == "budget_penalize":
                pushes = self.state.budget_penalize(now, self.holder, **fields)
            elif op.startswith("partition_"):
                return getattr(self.state, op)(self.holder, **fields)
            else:
                return getattr(self.state, op)(**fields)
        for holder, (name, msg) in pushes.items():  # one holder here: nothing to push in practice
            if holder != self.holder:
                for handler in self._subscribers.get(PUSH_GRANT, []):
                    handler(name=name, grant=msg)
        return answer

    def subscribe(self, push: str, handler: Callable[..., None]) -> None:
        self._subscribers.setdefault(push, []).append(handler)

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        handler = _topic_handlers.get(topic)
        if handler is not None:
            try:
                handler(message)
            except Exception:  # progress must never fail a paid row
                pass


_local: LocalCoordinator | None = None
_local_lock = threading.Lock()


def local_coordinator() -> LocalCoordinator:
    """This process's local coordinator."""
    global _local
    with _local_lock:
        if _local is None:
            _local = LocalCoordinator()
        return _local
