"""Stopping a run promptly, wherever its partitions run.

Dask cannot stop a running task: cancelling a future, a Ctrl+C in
``compute()`` or another partition's error only drop results, while the
task's threads go on calling (and paying). So every partition's call pool
registers here while it runs, and is stopped (no new call at once, the
calls in flight cut short after :data:`STOP_GRACE` seconds, see
:mod:`dask_llm._calls._attempt`) by whichever applies:

- :func:`stop_topic`: ``dask-llm run``'s Ctrl+C, sent to every worker
  (``client.run``) through the run's progress topic;
- a **cancelled task** on a ``distributed`` worker (:func:`task_released`):
  the client released the result (Ctrl+C in ``compute()``, an error in
  another partition, the future garbage-collected);
- a **failed or interrupted local compute** (threaded and synchronous
  schedulers): a dask callback stops the pools of this process and waits,
  briefly, until their finished rows are journaled (:func:`watch_local_computes`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STOP_GRACE", "Stoppable", "running", "stop_all", "stop_topic", "task_released", "watch_local_computes"]


#: Seconds the calls in flight get to finish, and be kept, once a pool is
#: asked to stop: most answers arrive by then (a call cut short may be billed
#: anyway, and is paid again by the next run); a hung call does not hold the stop.
STOP_GRACE = 1.0


class Stoppable:
    """What a running pool offers: how to stop it, and whether it is done.

    Stopping has two steps: ``draining`` (start no new call, no new wait)
    at once, then ``stop`` (cut the calls in flight) after a grace.
    """

    def __init__(self, topic: str | None) -> None:
        self.topic = topic
        self.draining = threading.Event()
        self.stop = threading.Event()
        self.reason: str | None = None
        self.done = threading.Event()

    def request_stop(self, reason: str, grace: float = STOP_GRACE) -> None:
        """Drain now and cut the calls in flight after ``grace`` seconds (0: now)."""
        if self.reason is None:
            self.reason = reason
        self.draining.set()
        if grace <= 0:
            self.stop.set()
        elif not self.stop.is_set():
            timer = threading.Timer(grace, self.stop.set)
            timer.daemon = True
            timer.start()


_running: set[Stoppable] = set()
#: Runs stopped in this process: a partition of one that registers later
#: (its task had started, but not its pool, when the stop came) stops at once.
_stopped_topics: set[str] = set()
_lock = threading.Lock()


@contextmanager
def running(topic: str | None) -> Iterator[Stoppable]:
    """Register a pool for the duration of the block."""
    handle = Stoppable(topic)
    with _lock:
        _running.add(handle)
        stopped = topic is not None and topic in _stopped_topics
    if stopped:
        handle.request_stop("cancelled", grace=0.0)
    try:
        yield handle
    finally:
        handle.done.set()
        with _lock:
            _running.discard(handle)


def stop_topic(topic: str) -> int:
    """Stop the pools of the run published on ``topic`` in this process; how many."""
    with _lock:
        _stopped_topics.add(topic)
        hits = [h for h in _running if h.topic == topic]
    for handle in hits:
        handle.request_stop("cancelled")
    return len(hits)


def stop_all(reason: str, wait: float = 0.0) -> int:
    """Stop every pool of this process, and wait up to ``wait`` seconds for them to end."""
    with _lock:
        hits = list(_running)
    for handle in hits:
        handle.request_stop(reason)
    deadline = time.monotonic() + wait
    for handle in hits:
        handle.done.wait(max(0.0, deadline - time.monotonic()))
    return len(hits)


def task_released() -> bool:
    """Whether the ``distributed`` task running in this thread is no longer
    wanted (cancelled or released by the scheduler); ``False`` elsewhere."""
    try:
        from distributed import get_worker
        from distributed import worker as worker_module
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    try:
        worker = get_worker()
    except ValueError:
        return False
    key = getattr(getattr(worker_module, "thread_state", None), "key", None)
    if key is None:
        return False
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


_watching = False
_watch_lock = threading.Lock()
#: Seconds a failed local compute waits for the pools it stops to journal and end.
DRAIN = 5.0


def watch_local_computes() -> None:
    """Register, once per process, a dask callback that stops this process's
    pools when a compute on a local scheduler ends in an error or Ctrl+C.

    The callback fires in the thread that called ``compute()``, as dask
    unwinds; other pools of the process (another thread's compute) stop too,
    which is the price of dask's local schedulers not saying which tasks
    belong to which compute.
    """
    global _watching
    with _watch_lock:
        if _watching:
            return
        from dask.callbacks import Callback

        def finish(dsk: Any, state: Any, errored: bool) -> None:
            if errored:
                stop_all("the computation failed or was interrupted", wait=DRAIN)

        Callback(finish=finish).register()
        _watching = True
