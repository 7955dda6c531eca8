"""Row-level progress of a run, counted where rows finish and summed where
the user watches.

::

    worker process (or this process)                   driver process
    --------------------------------                   --------------
    enrich_partition                                   Tally (running totals)
      report.row(outcome) --> _Publisher -- batch -->    ^
                              (counts, flushed          | client.subscribe_topic(topic),
                               every ~0.5 s)  publish() |   or a direct call without a
                              via the coordinator ------'   cluster (on_topic)

A row costs a dict update under a lock; a message leaves a process at most
every :attr:`ProgressChannel.interval` seconds, whatever the number of rows
or threads, so the overhead stays far below one model call. The topic is
unique per run, so two runs on one cluster never mix their counts.

The same channel carries a stop request the other way: :func:`cancel` marks
the topic as cancelled in every process and stops its running pools (see
:mod:`._stopping`): calls in flight are cut short within a fraction of a
second and finished rows are journaled. Dask cannot stop a running task by
itself: cancelling a future only drops its result.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from .._coordination import Coordinator, on_topic
from .._errors import DaskLLMError

__all__ = [
    "COUNTS",
    "PROGRESS_PREFIX",
    "Cancelled",
    "ProgressChannel",
    "Snapshot",
    "Tally",
    "active",
    "calling",
    "cancel",
    "collect",
    "partition_progress",
]

#: What a batch counts: rows called, rows restored from a checkpoint, rows
#: that failed, tokens, calls (attempts), the calls that answered a row
#: (its last attempt, when it succeeded) and 429 answers. The per-row counts
#: travel as each partition attempt's running totals (under :data:`PARTS`),
#: so that a restarted partition's rows are counted once; the others (what
#: was spent) as increments.
COUNTS = (
    "rows",
    "restored",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "calls",
    "calls_ok",
    "rate_limited",
    # With the Batch API: batches created and ended, their requests, and how
    # many of those the provider reports done.
    "batches",
    "batches_done",
    "batch_requests",
    "batch_completed",
)


#: Counted once per row, per partition attempt.
_PER_ROW = frozenset({"rows", "restored", "errors"})
#: The key of the per-partition running totals in a published batch.
PARTS = "parts"


class Cancelled(DaskLLMError):
    """The run was cancelled (Ctrl+C); raised in the partitions still running."""


#: Every progress topic starts so (the scheduler's dashboard page finds them by it).
PROGRESS_PREFIX = "dask-llm-progress-"
#: This process, as the progress batches name it.
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"
#: Calls in flight per topic in this process (see :func:`calling`).
_in_flight: Counter[str] = Counter()
_in_flight_lock = threading.Lock()


@contextmanager
def calling(topic: str | None) -> Iterator[None]:
    """Count a call of the run on ``topic`` as in flight while inside."""
    if topic is None:
        yield
        return
    with _in_flight_lock:
        _in_flight[topic] += 1
    # The gauge goes with the counts, which come when rows finish: calls
    # that have just started would not show for a whole call's latency.
    with _registry_lock:
        publishers = [pub for (t, _), pub in _publishers.items() if t == topic]
    for pub in publishers:
        pub.add({})  # (sent within one interval, like any count)
    try:
        yield
    finally:
        with _in_flight_lock:
            _in_flight[topic] -= 1
            if _in_flight[topic] <= 0:
                del _in_flight[topic]


@dataclass(frozen=True)
class ProgressChannel:
    """Where the partitions of one run report progress; travels in the task graph.

    Parameters
    ----------
    topic : str
        Event topic, unique per run.
    interval : float
        Seconds between two messages from one process at most.
    """

    topic: str
    interval: float = 0.5

    @classmethod
    def new(cls, interval: float = 0.5) -> ProgressChannel:
        return cls(f"{PROGRESS_PREFIX}{uuid.uuid4().hex[:16]}", interval)


class _Outcome(Protocol):
    @property
    def error(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def rate_limited(self) -> int: ...


# ---------------------------------------------------------------- worker side

#: Topics cancelled in this process (a set lookup per row).
_cancelled: set[str] = set()
#: In-process receivers, for runs without distributed workers.
_publishers: dict[tuple[str, str], _Publisher] = {}
#: Partitions of each topic running in this process.
_active: Counter[str] = Counter()
_registry_lock = threading.Lock()


def _register_stop_handler() -> None:
    from .._coordination._client import stop_handlers

    if cancel not in stop_handlers:
        stop_handlers.append(cancel)


def cancel(topic: str) -> None:
    """Stop every partition of the run on ``topic`` in this process: calls in
    flight are cut short, finished rows are journaled, and partitions not
    started yet do not start. ``client.run(cancel, topic)`` does it cluster-wide."""
    from ._stopping import stop_topic

    _cancelled.add(topic)
    stop_topic(topic)


def active(topic: str) -> int:
    """Partitions of the run on ``topic`` still running in this process
    (``client.run(active, topic)`` asks every worker)."""
    return _active[topic]


class _Publisher:
    """Counts of one run in one process, sent in batches."""

    def __init__(self, channel: ProgressChannel, send: Callable[[dict[str, int]], None]) -> None:
        self.channel = channel
        self._send = send
        self._counts: Counter[str] = Counter()
        self._parts: dict[str, list[Any]] = {}  # part -> [attempt, rows, restored, errors, size], cumulative
        self._changed: set[str] = set()  # parts to send at the next flush
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._sent_in_flight = 0

    def add(self, counts: Mapping[str, int], part: tuple[str, str] | None = None, size: int | None = None) -> None:
        """Add increments; the per-row ones (``rows``, ``restored``,
        ``errors``) go to the cumulative counts of ``part`` (its label and
        attempt) when given, ``size`` being the partition's rows."""
        with self._lock:
            if part is None:
                self._counts.update(counts)
            else:
                label, attempt = part
                entry = self._parts.get(label)
                if entry is None or entry[0] != attempt:
                    entry = self._parts[label] = [attempt, 0, 0, 0, size]
                entry[1] += counts.get("rows", 0)
                entry[2] += counts.get("restored", 0)
                entry[3] += counts.get("errors", 0)
                self._changed.add(label)
                self._counts.update({k: v for k, v in counts.items() if k not in _PER_ROW})
            if time.monotonic() - self._last < self.channel.interval:
                # Too soon: make sure these counts leave within one interval,
                # even if no other row finishes meanwhile.
                if self._timer is None:
                    self._timer = threading.Timer(self.channel.interval, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            batch: dict[str, Any] = {k: v for k, v in self._counts.items() if v}
            self._counts.clear()
            if self._changed:
                # Cumulative: kept after sending, so each message holds a part's whole count so far.
                batch[PARTS] = {label: list(self._parts[label]) for label in self._changed}
                self._changed.clear()
            self._last = time.monotonic()
            self._timer = None
            # A gauge, not a count: the calls of this run in flight in this process now.
            in_flight = _in_flight[self.channel.topic]
            changed = in_flight != self._sent_in_flight
            self._sent_in_flight = in_flight
        if batch or changed:
            batch["in_flight"] = {_PROCESS: in_flight}
            try:
                self._send(batch)
            except Exception:  # progress must never fail a paid row
                pass


def _publisher(channel: ProgressChannel, coordinator: Coordinator) -> _Publisher:
    """The publisher of ``channel`` in this process, sending through ``coordinator``."""
    key = (channel.topic, coordinator.holder)
    with _registry_lock:
        pub = _publishers.get(key)
        if pub is None:
            topic = channel.topic

            def send(batch: dict[str, int]) -> None:
                coordinator.publish(topic, batch)

            pub = _publishers[key] = _Publisher(channel, send)
    return pub


class PartitionProgress:
    """The progress reporter of one partition (see :func:`partition_progress`).

    Used as a context manager around the partition's calls: while inside,
    the partition counts as running for :func:`active`, and leaving sends
    what is still counted.
    """

    def __init__(
        self,
        channel: ProgressChannel,
        coordinator: Coordinator,
        restored: int,
        part: str,
        size: int | None,
        resumed: tuple[int, int] = (0, 0),
    ) -> None:
        self.topic = channel.topic
        if self.topic in _cancelled:
            raise Cancelled("run cancelled")
        self._pub = _publisher(channel, coordinator)
        # An attempt of this partition: a later one (a restarted task) replaces
        # the earlier one's row counts instead of adding to them.
        self._part = (part, f"{time.time():.6f}-{uuid.uuid4().hex[:6]}")
        rows, errors = resumed
        self._pub.add({"restored": restored, "rows": rows, "errors": errors}, self._part, size)

    def __enter__(self) -> PartitionProgress:
        with _registry_lock:
            _active[self.topic] += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._pub.flush()
        with _registry_lock:
            _active[self.topic] -= 1
            if not _active[self.topic]:
                # The last partition of the run here: forget its publisher,
                # so a long-lived worker does not keep one per past run.
                del _active[self.topic]
                for key in [k for k in _publishers if k[0] == self.topic]:
                    del _publishers[key]

    def row(self, outcome: _Outcome) -> None:
        """Count a finished row; raise :class:`Cancelled` if the run was cancelled."""
        self._pub.add(
            {
                "rows": 1,
                "errors": outcome.error is not None,
                "prompt_tokens": outcome.prompt_tokens or 0,
                "completion_tokens": outcome.completion_tokens or 0,
                "calls": outcome.attempts,
                "calls_ok": int(outcome.error is None and outcome.attempts > 0),
                "rate_limited": getattr(outcome, "rate_limited", 0),
            },
            self._part,
        )
        if self.topic in _cancelled:
            raise Cancelled("run cancelled")


class _Silent:
    """The reporter of a job without progress: does nothing."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def row(self, outcome: _Outcome) -> None:
        pass


_SILENT = _Silent()


def partition_progress(
    channel: ProgressChannel | None,
    coordinator: Coordinator,
    restored: int = 0,
    part: str = "0",
    size: int | None = None,
    resumed: tuple[int, int] = (0, 0),
) -> PartitionProgress | _Silent:
    """The reporter for a partition about to run, in the thread running its task.

    Parameters
    ----------
    channel : ProgressChannel or None
        The run's channel; ``None``: no progress, a reporter that does nothing.
    coordinator : Coordinator
        Where the counts go (the scheduler, or this process).
    part : str
        The partition's label within the run: the rows of a partition are
        counted once, whatever attempts of it run.
    restored : int
        Rows of the partition that a checkpoint holds from an earlier run.
    resumed : (int, int)
        Rows (and of those, errors) that an earlier attempt of this very
        run saved, e.g. before its worker died: counted as rows of the run,
        as they were when that attempt reported them, so that the run's
        counts never go down when a task starts again.
    size : int, optional
        Rows of the partition: the run's total, once every partition has
        reported, and an estimate until then (see :attr:`Snapshot.seen`).

    Raises
    ------
    Cancelled
        The run was cancelled before this partition started.
    """
    return _SILENT if channel is None else PartitionProgress(channel, coordinator, restored, part, size, resumed)


# ---------------------------------------------------------------- client side


@dataclass(frozen=True)
class Snapshot:
    """The totals of a run at one moment.

    ``recent_rate`` is the rate over the last :data:`RATE_WINDOW` seconds:
    the ETA follows the current pace, not the slow start of the run.
    """

    total: int | None
    elapsed: float
    recent_rate: float | None = None
    rows: int = 0
    restored: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    calls_ok: int = 0
    rate_limited: int = 0
    batches: int = 0
    batches_done: int = 0
    batch_requests: int = 0
    batch_completed: int = 0
    #: Partitions that reported their size, and their rows in all.
    parts_seen: int = 0
    rows_seen: int = 0

    @property
    def done(self) -> int:
        return self.rows + self.restored

    @property
    def rate(self) -> float:
        """Rows called per second (restored rows cost no time)."""
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.rate if self.recent_rate is None else self.recent_rate
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate


#: Seconds over which the pace behind the ETA is measured.
RATE_WINDOW = 30.0


class Tally:
    """Running totals of a run, fed batches from any thread."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self._counts: Counter[str] = Counter()
        self._parts: dict[str, list[Any]] = {}  # part -> the latest attempt's cumulative row counts
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._history: deque[tuple[float, int]] = deque()  # (time, rows) per snapshot

    def add(self, batch: Mapping[str, Any]) -> None:
        with self._lock:
            # Per-row counts come per part (PARTS) from partitions; plain ones (no part) add up.
            self._counts.update({k: int(v) for k, v in batch.items() if k in COUNTS})
            for label, entry in (batch.get(PARTS) or {}).items():
                known = self._parts.get(label)
                # The latest attempt of a partition is its whole story: a
                # restarted task restores what the first one saved.
                if known is None or str(entry[0]) >= str(known[0]):
                    self._parts[label] = list(entry)

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            for name, at in (("rows", 1), ("restored", 2), ("errors", 3)):
                counts[name] = counts.get(name, 0) + sum(int(e[at]) for e in self._parts.values())
            sizes = [int(e[4]) for e in self._parts.values() if len(e) > 4 and e[4] is not None]
            counts["parts_seen"], counts["rows_seen"] = len(sizes), sum(sizes)
            rows = counts.get("rows", 0)
            history = self._history
            history.append((now, rows))
            while len(history) > 2 and history[1][0] < now - RATE_WINDOW:
                history.popleft()
            then, rows_then = history[0]
        recent = (rows - rows_then) / (now - then) if now - then >= 1.0 else None
        return Snapshot(total=self.total, elapsed=now - self._start, recent_rate=recent, **counts)


@contextmanager
def collect(channel: ProgressChannel, tally: Tally, client: Any = None) -> Iterator[Tally]:
    """Feed ``tally`` with the batches published on ``channel`` while inside.

    With a ``distributed`` client the batches come through the scheduler
    (tasks run on its workers); without one, partitions run in this process
    and hand their batches over directly.
    """
    if client is None:
        on_topic(channel.topic, tally.add)
        try:
            yield tally
        finally:
            on_topic(channel.topic, None)
        return
    client.subscribe_topic(channel.topic, lambda event: tally.add(event[1]))
    try:
        yield tally
    finally:
        try:
            client.unsubscribe_topic(channel.topic)
        except Exception:  # the client may already be closing
            pass


# A stop asked through a remote coordinator (Spark) reaches this process's pools.
_register_stop_handler()
