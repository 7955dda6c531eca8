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

import multiprocessing
import sys
import threading
import types
from typing import Any

from .._errors import ConfigError
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
        return _local()
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return _local()
    with _lock:
        coordinator = _workers.get(id(worker))
        if coordinator is None or coordinator.worker is not worker:
            from ._dask import DaskWorkerCoordinator

            coordinator = _workers[id(worker)] = DaskWorkerCoordinator(worker)
        return coordinator


def _local() -> Coordinator:
    # Under dask's multiprocessing scheduler each pool process would hold a
    # coordinator of its own: a budget or a checkpoint's claims split per process.
    if _in_dask_process_pool():
        raise ConfigError(
            "dask's multiprocessing scheduler (scheduler='processes') has no coordinator its processes "
            "share: the budget, the spend cap and the checkpoint would each hold per process. "
            "Use the threaded scheduler, or processes with distributed's LocalCluster(processes=True)"
        )
    return local_coordinator()


def _in_dask_process_pool() -> bool:
    """Whether this task runs in a process of dask's multiprocessing
    scheduler: a child process, executing dask's local scheduler's tasks for
    a process pool (a distributed worker's tasks run in its own threads)."""
    if multiprocessing.parent_process() is None:
        return False
    modules = set()
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        modules.add(frame.f_globals.get("__name__"))
        frame = frame.f_back
    return "concurrent.futures.process" in modules and "dask.local" in modules
