"""Coordination: the one place per job, and how partitions reach it.

A budget's allocator, a spend cap's ledger and a run's progress counts must
be one per job, wherever its partitions run. They live in a
:class:`~._state.CoordinatorState`, hosted by a coordinator, which the
partitions reach through the :class:`~._protocol.Coordinator` transport:

- ``_protocol``: the transport and its messages (what a new engine implements);
- ``_state``: the allocators and ledgers, answering the messages (engine-free);
- ``_local``: the coordinator of a process without a cluster;
- ``_dask``: a Dask worker's handle on the scheduler's plugin;
- ``_plugin``: the Dask scheduler plugin that hosts the state.

May import: ``_budget`` (allocator), ``_cost`` (ledger), ``_errors``; and
``distributed``, only in ``_dask`` and ``_plugin`` and only when used.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ._local import LocalCoordinator, local_coordinator, on_topic
from ._protocol import OPS, PUSH_GRANT, Coordinator

__all__ = ["OPS", "PUSH_GRANT", "Coordinator", "LocalCoordinator", "current", "local_coordinator", "on_topic"]

_workers: dict[int, Any] = {}
_lock = threading.Lock()


def current() -> Coordinator:
    """The coordinator of code running in this thread: the scheduler inside a
    Dask worker's task, this process's local coordinator anywhere else.

    Call it from the task's own thread: that is how the worker is found.
    """
    if "distributed" not in sys.modules:  # no worker here, and no need to import it
        return local_coordinator()
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return local_coordinator()
    with _lock:
        coordinator = _workers.get(id(worker))
        if coordinator is None or coordinator.worker is not worker:
            from ._dask import DaskWorkerCoordinator

            coordinator = _workers[id(worker)] = DaskWorkerCoordinator(worker)
        return coordinator
