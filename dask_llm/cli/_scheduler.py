"""Where ``dask-llm run`` computes: ``--scheduler sync|threads|local|tcp://HOST:PORT``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask

__all__ = ["Scheduler", "open_scheduler"]

_NAMED = ("sync", "threads", "local")


@dataclass
class Scheduler:
    """An open scheduler: the ``distributed`` client, if any, and how to describe it."""

    client: Any | None
    description: str
    dashboard: str | None = None
    #: Partitions computed at once.
    parallel: int = 1


@contextmanager
def open_scheduler(kind: str, workers: int, verbose: bool = False) -> Iterator[Scheduler]:
    """Open the scheduler for a run and close what was started on the way out.

    ``workers`` is the number of partitions computed at once: threads for
    ``threads``, worker processes (one thread each, so ``--workers`` times
    ``--threads`` calls are in flight) for ``local``; ignored otherwise.

    Raises
    ------
    ConnectionError
        The scheduler at an address cannot be reached.
    """
    if kind == "sync":
        with dask.config.set(scheduler="sync"):
            yield Scheduler(None, "synchronous (one partition at a time)")
        return
    if kind == "threads":
        with dask.config.set(scheduler="threads", num_workers=workers):
            yield Scheduler(None, f"threads ({workers} partitions at a time)", parallel=workers)
        return

    from distributed import Client, LocalCluster

    if kind == "local":
        with _sigint_ignored():
            # Not the default 8787: it may belong to another cluster.
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",  # a free port, on this machine only
                silence_logs=logging.INFO if verbose else logging.ERROR,
            )
        with cluster, Client(cluster) as client:
            yield Scheduler(client, f"LocalCluster of {workers} worker processes", _dashboard(client), parallel=workers)
        return
    try:
        client = Client(kind, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot connect to the scheduler at {kind}: {exc}") from None
    with client:
        workers_info = client.scheduler_info().get("workers", {})
        threads = sum(int(w.get("nthreads", 1)) for w in workers_info.values())
        yield Scheduler(
            client, f"cluster at {kind} ({len(workers_info)} workers)", _dashboard(client), parallel=max(threads, 1)
        )


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes are spawned, so that they inherit
    "ignored" (it survives exec, and Python then installs no handler).

    Ctrl+C in a terminal signals the whole process group: without this,
    every worker would die at once, mid-row, instead of letting this process
    cancel the run and wait for the finished rows to be saved.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dashboard(client: Any) -> str | None:
    """The link to dask-llm's page on the cluster's dashboard, if it answers.

    The page is plain HTML served by the scheduler itself, so it works with
    or without bokeh (dask's own pages need bokeh; without it they only say
    so). Its plugin is registered here, before the job, so that the link is
    checked, not assumed: a scheduler without a dashboard, or one we may not
    extend, gets no link.
    """
    import urllib.request

    from .._coordination._plugin import PLUGIN_NAME, CoordinatorPlugin
    from .._observe import page_link

    try:
        link = page_link(client.dashboard_link)
        if link is None:
            return None
        client.register_plugin(CoordinatorPlugin(), name=PLUGIN_NAME)
        with urllib.request.urlopen(link + "api/jobs.json", timeout=5) as answer:
            return link if answer.status == 200 else None
    except Exception:  # no dashboard, or not reachable from here: no link
        return None
